use super::*;

fn build(images: &[(u8, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (id, data) in images {
        w.image(*id, data, 0).unwrap();
    }
    w.into_inner()
}

fn verify(bytes: &[u8], chunk: usize) -> Result<Summary, Error> {
    let mut v = Verifier::new();
    for c in bytes.chunks(chunk.max(1)) {
        v.update(c)?;
    }
    v.finish()
}

#[test]
fn header_round_trips() {
    let h = Header {
        major: 1,
        minor: 2,
        next_image_version: 3,
        image_version: 4,
        header_words: 3,
        image_id: 63,
        length: 12345,
        crc: 0xdead_beef,
        following: 1 << 62,
    };
    let bytes = h.encode();
    assert_eq!(
        &bytes[..4],
        &[0x42, 0x66, 0x02, 0x13],
        "magic bytes as in rshim.md"
    );
    assert_eq!(Header::decode(&bytes).unwrap(), h);
}

#[test]
fn valid_stream_verifies_in_any_chunking() {
    let bytes = build(&[
        (id::BL2, b"hello"),
        (id::BL31, &[7u8; 16]),
        (id::INITRAMFS, &[1u8; 1001]),
    ]);
    for chunk in [1, 3, 8, 24, 25, 4096] {
        let s = verify(&bytes, chunk).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        assert_eq!(s.images.len(), 3);
        assert_eq!(s.images[2].image_id, id::INITRAMFS);
        assert_eq!(s.images[1].offset, 24 + 8);
        assert_eq!(s.bfb_bytes, bytes.len() as u64);
        assert_eq!(s.trailer_bytes, 0);
        assert!(s.is_installer());
    }
}

#[test]
fn padding_is_part_of_crc_and_length() {
    let bytes = build(&[(id::BL2, b"abc")]);
    assert_eq!(bytes.len(), 24 + 8);
    let mut bad = bytes.clone();
    bad[24 + 5] = 1; // a non-zero byte in the padding
    assert!(matches!(
        verify(&bad, 7),
        Err(Error::CrcMismatch {
            index: 0,
            image_id: id::BL2,
            offset: 0,
            ..
        })
    ));
}

#[test]
fn bf_cfg_trailer_is_accepted_after_images() {
    let mut bytes = build(&[(id::BL2, b"x")]);
    bytes.extend_from_slice(b"BFB_ADD_ON=\nHOSTNAME=dpu1\n");
    let s = verify(&bytes, 5).unwrap();
    assert_eq!(s.images.len(), 1);
    assert_eq!(s.trailer_bytes, 26);
    // ...but not in images-only mode.
    let mut v = Verifier::images_only();
    assert!(matches!(
        v.update(&bytes),
        Err(Error::BadMagic {
            index: 1,
            offset: 32,
            ..
        })
    ));
}

#[test]
fn corruption_is_reported_with_image_and_offset() {
    let good = build(&[
        (id::BL2, &[1u8; 40]),
        (id::BL31, &[2u8; 40]),
        (id::INITRAMFS, &[3u8; 400]),
    ]);
    let second = 24 + 40;
    // Table: (mutation, expected error matcher)
    let mut crc = good.clone();
    crc[second + 24 + 3] ^= 0xff;
    let e = verify(&crc, 13).unwrap_err();
    assert!(
        matches!(e, Error::CrcMismatch { index: 1, image_id: id::BL31, offset, .. } if offset == second as u64),
        "{e}"
    );
    assert!(e.to_string().contains("image #1 (id 3) at offset 64"), "{e}");

    let mut magic = good.clone();
    magic[0] = 0;
    assert!(matches!(
        verify(&magic, 100),
        Err(Error::BadMagic {
            index: 0,
            offset: 0,
            ..
        })
    ));

    let mut version = good.clone();
    version[4] = 0x02; // major 2
    assert!(matches!(
        verify(&version, 100),
        Err(Error::BadVersion {
            index: 0,
            major: 2,
            ..
        })
    ));

    let truncated = &good[..good.len() - 10];
    let e = verify(truncated, 100).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TruncatedImage {
                index: 2,
                image_id: id::INITRAMFS,
                ..
            }
        ),
        "{e}"
    );

    let header_cut = &good[..second + 10];
    assert!(matches!(
        verify(header_cut, 100),
        Err(Error::TruncatedHeader {
            index: 1,
            have: 10,
            ..
        })
    ));

    assert_eq!(verify(&[], 1), Err(Error::Empty));
    assert!(matches!(
        verify(b"#!/bin/sh\necho not a bfb\n", 4),
        Err(Error::BadMagic { index: 0, .. })
    ));
}

#[test]
fn test_bfb_is_valid_and_sized() {
    for size in [0u64, 1000, 100_000, 3 * 1024 * 1024 + 5] {
        let mut out = Vec::new();
        let n = write_test_bfb(&mut out, size, "4.9.0", 42).unwrap();
        assert_eq!(n, out.len() as u64);
        if size > 50_000 {
            assert!(n >= size && n < size + 8, "size {size} -> {n}");
        }
        let s = verify(&out, 65536).unwrap();
        assert_eq!(s.images.len(), 6);
        assert!(s.is_installer());
    }
    // Deterministic per seed, different across seeds.
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    write_test_bfb(&mut a, 50_000, "1", 1).unwrap();
    write_test_bfb(&mut b, 50_000, "1", 1).unwrap();
    write_test_bfb(&mut c, 50_000, "1", 2).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn verify_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.bfb");
    std::fs::write(&p, build(&[(id::BL2, b"ok")])).unwrap();
    assert_eq!(verify_file(&p).unwrap().images.len(), 1);
    let mut bytes = build(&[(id::BL2, b"ok")]);
    bytes.push(1);
    std::fs::write(&p, &bytes).unwrap();
    let e = verify_file(&p).unwrap_err().to_string();
    assert!(e.contains("x.bfb") && e.contains("not a valid BFB"), "{e}");
    let e = verify_file(&dir.path().join("missing.bfb"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.bfb"), "{e}");
}

use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::*;

fn test_bfb(size: u64, seed: u64) -> Vec<u8> {
    let mut v = Vec::new();
    hostplane_bfb::write_test_bfb(&mut v, size, "4.9.0", seed).unwrap();
    v
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A test HTTP server serving one image, with Range support and faults.
#[derive(Default)]
struct Srv {
    data: Vec<u8>,
    /// Requests (full or ranged) whose body is cut after half of it.
    cut: AtomicUsize,
    ignore_range: bool,
    /// Delay between 64 KiB body chunks.
    slow: Option<Duration>,
    full: AtomicUsize,
    ranges: StdMutex<Vec<u64>>,
}

async fn handler(State(s): State<Arc<Srv>>, headers: HeaderMap) -> Response {
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let mut resp = Response::builder();
    let body_from = match start {
        Some(off) if !s.ignore_range => {
            s.ranges.lock().unwrap().push(off as u64);
            if off >= s.data.len() {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .body(Body::empty())
                    .unwrap();
            }
            resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {off}-{}/{}", s.data.len() - 1, s.data.len()),
            );
            off
        }
        _ => {
            s.full.fetch_add(1, Ordering::SeqCst);
            resp = resp.status(StatusCode::OK);
            0
        }
    };
    let body = s.data[body_from..].to_vec();
    let len = body.len();
    let cut = s
        .cut
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let keep = if cut { len / 2 } else { len };
    let slow = s.slow;
    let chunks: Vec<bytes::Bytes> = body[..keep]
        .chunks(64 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>))
        .then(move |c| async move {
            if let Some(d) = slow {
                tokio::time::sleep(d).await;
            }
            c
        })
        .chain(futures::stream::iter(
            cut.then(|| Err(std::io::Error::other("connection cut by test"))),
        ));
    resp.header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt;

async fn serve(srv: Arc<Srv>) -> SocketAddr {
    let app = axum::Router::new()
        .route("/img.bfb", axum::routing::get(handler))
        .with_state(srv);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn cache(dir: &Path, max_bytes: u64) -> BfbCache {
    BfbCache::new(CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes,
        retry_backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_secs(20),
        ..CacheConfig::default()
    })
    .unwrap()
}

fn bfb_ref(url: String, data: &[u8]) -> BfbRef {
    BfbRef {
        url,
        sha256: sha(data),
        size_bytes: data.len() as u64,
        ..Default::default()
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn downloads_verifies_and_hits_cache() {
    let data = test_bfb(300_000, 1);
    let srv = Arc::new(Srv {
        data: data.clone(),
        ..Default::default()
    });
    let addr = serve(srv.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 30);
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    let seen = StdMutex::new(Vec::new());
    let got = c
        .fetch_with_progress(&r, &CancellationToken::new(), &|p| seen.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(got.path, c.entry_path(&r.sha256));
    assert_eq!(got.size, data.len() as u64);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|p| p.total == Some(data.len() as u64))
    );
    drop(got);
    // Second fetch: a hit, no request.
    let again = c.fetch(&r, &CancellationToken::new()).await.unwrap();
    assert_eq!(again.size, data.len() as u64);
    assert_eq!(srv.full.load(Ordering::SeqCst), 1);
    assert_eq!(files(dir.path()), vec![format!("{}.bfb", r.sha256)]);
}

#[tokio::test]
async fn resumes_after_connection_cut() {
    let data = test_bfb(2_000_000, 2);
    let srv = Arc::new(Srv {
        data: data.clone(),
        cut: AtomicUsize::new(2),
        ..Default::default()
    });
    let addr = serve(srv.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 30);
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    let got = c.fetch(&r, &CancellationToken::new()).await.unwrap();
    assert_eq!(sha(&std::fs::read(&got.path).unwrap()), r.sha256);
    assert_eq!(
        srv.full.load(Ordering::SeqCst),
        1,
        "only the first request is a full one"
    );
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(
        ranges[0] > 0 && ranges[1] > ranges[0],
        "each resume starts further: {ranges:?}"
    );
}

#[tokio::test]
async fn resumes_leftover_part_file_rehashing_its_prefix() {
    let data = test_bfb(500_000, 3);
    let srv = Arc::new(Srv {
        data: data.clone(),
        ..Default::default()
    });
    let addr = serve(srv.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    std::fs::write(dir.path().join(format!("{}.part", r.sha256)), &data[..123_456]).unwrap();
    let c = cache(dir.path(), 1 << 30);
    let got = c.fetch(&r, &CancellationToken::new()).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(srv.full.load(Ordering::SeqCst), 0);
    assert_eq!(*srv.ranges.lock().unwrap(), vec![123_456]);
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let data = test_bfb(200_000, 4);
    let srv = Arc::new(Srv {
        data: data.clone(),
        ignore_range: true,
        ..Default::default()
    });
    let addr = serve(srv.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    // A leftover prefix that would corrupt the file if the 200 body were appended.
    std::fs::write(dir.path().join(format!("{}.part", r.sha256)), &data[..50_000]).unwrap();
    let got = cache(dir.path(), 1 << 30)
        .fetch(&r, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(srv.full.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn digest_mismatch_is_an_error_and_leaves_no_file() {
    let data = test_bfb(100_000, 5);
    let srv = Arc::new(Srv {
        data: data.clone(),
        ..Default::default()
    });
    let addr = serve(srv).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/img.bfb?sig=SECRET");
    let mut r = bfb_ref(url, &data);
    let wrong = "ab".repeat(32);
    r.sha256 = wrong.to_uppercase();
    let err = cache(dir.path(), 1 << 30)
        .fetch(&r, &CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CacheError::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(&sha(&data)) && msg.contains("/img.bfb"),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"), "query string leaked: {msg}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[tokio::test]
async fn corrupt_image_with_right_digest_is_refused_naming_image_and_offset() {
    let mut data = test_bfb(100_000, 6);
    let n = data.len();
    data[n - 100] ^= 0xff; // inside the last image (initramfs): its CRC no longer matches
    let srv = Arc::new(Srv {
        data: data.clone(),
        ..Default::default()
    });
    let addr = serve(srv).await;
    let dir = tempfile::tempdir().unwrap();
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    let err = cache(dir.path(), 1 << 30)
        .fetch(&r, &CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            CacheError::Corrupt {
                source: hostplane_bfb::Error::CrcMismatch { image_id: 63, .. },
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("id 63") && msg.contains("offset"), "{msg}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[tokio::test]
async fn concurrent_fetches_share_one_download() {
    let data = test_bfb(1_000_000, 7);
    let srv = Arc::new(Srv {
        data: data.clone(),
        slow: Some(Duration::from_millis(2)),
        ..Default::default()
    });
    let addr = serve(srv.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 30);
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    let cancel = CancellationToken::new();
    let results = futures::future::join_all((0..5).map(|_| c.fetch(&r, &cancel))).await;
    for res in &results {
        assert_eq!(res.as_ref().unwrap().size, data.len() as u64);
    }
    assert_eq!(srv.full.load(Ordering::SeqCst), 1);
    assert!(srv.ranges.lock().unwrap().is_empty());
}

#[tokio::test]
async fn cancelled_download_keeps_part_and_a_later_fetch_resumes() {
    let data = test_bfb(2_000_000, 8);
    let srv = Arc::new(Srv {
        data: data.clone(),
        slow: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let addr = serve(srv.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 30);
    let r = bfb_ref(format!("http://{addr}/img.bfb"), &data);
    let cancel = CancellationToken::new();
    let progressed = tokio::sync::Notify::new();
    let on_progress = |p: DownloadProgress| {
        if p.done > 0 {
            progressed.notify_one();
        }
    };
    let fetch = c.fetch_with_progress(&r, &cancel, &on_progress);
    let (res, ()) = tokio::join!(fetch, async {
        progressed.notified().await;
        cancel.cancel();
    });
    assert!(matches!(res, Err(CacheError::Cancelled { .. })), "{res:?}");
    // The abandoned task stops and releases the digest; then a new fetch resumes.
    let part = dir.path().join(format!("{}.part", r.sha256));
    let got = c.fetch(&r, &CancellationToken::new()).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert!(!part.exists());
    let ranges = srv.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 1, "the second fetch resumed: {ranges:?}");
    assert!(ranges[0] > 0);
}

#[tokio::test]
async fn file_urls_are_copied_and_verified() {
    let src_dir = tempfile::tempdir().unwrap();
    let data = test_bfb(50_000, 9);
    let src = src_dir.path().join("image.bfb");
    std::fs::write(&src, &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 30);
    let url = reqwest::Url::from_file_path(&src).unwrap().to_string();
    let got = c
        .fetch(&bfb_ref(url.clone(), &data), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);

    let mut bad = bfb_ref(url, &data);
    bad.size_bytes += 8;
    let err = c
        .fetch(
            &BfbRef {
                sha256: "0".repeat(64),
                ..bad
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::SizeMismatch { .. }), "{err}");
}

#[tokio::test]
async fn wrong_sized_cache_entry_is_refetched() {
    let src_dir = tempfile::tempdir().unwrap();
    let data = test_bfb(40_000, 10);
    let src = src_dir.path().join("image.bfb");
    std::fs::write(&src, &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = bfb_ref(reqwest::Url::from_file_path(&src).unwrap().to_string(), &data);
    std::fs::write(dir.path().join(format!("{}.bfb", r.sha256)), b"short").unwrap();
    let got = cache(dir.path(), 1 << 30)
        .fetch(&r, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
}

#[tokio::test]
async fn evicts_least_recently_used_but_never_a_leased_entry() {
    let src_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<(BfbRef, Vec<u8>)> = (0..3)
        .map(|i| {
            let data = test_bfb(100_000, 31 + 2 * i); // odd seeds: the generator ors in 1
            let src = src_dir.path().join(format!("{i}.bfb"));
            std::fs::write(&src, &data).unwrap();
            (
                bfb_ref(reqwest::Url::from_file_path(&src).unwrap().to_string(), &data),
                data,
            )
        })
        .collect();
    let size = imgs[0].1.len() as u64;
    // Room for two entries.
    let c = cache(dir.path(), 2 * size + 10);
    let cancel = CancellationToken::new();
    let held0 = c.fetch(&imgs[0].0, &cancel).await.unwrap();
    let e1 = c.fetch(&imgs[1].0, &cancel).await.unwrap();
    drop(e1);
    // 0 is the oldest but leased: 1 goes.
    let e2 = c.fetch(&imgs[2].0, &cancel).await.unwrap();
    assert!(held0.path.exists());
    assert!(!c.entry_path(&imgs[1].0.sha256).exists());
    assert!(e2.path.exists());
    drop(held0);
    drop(e2);
    // Now nothing is leased: fetching 1 again evicts the least recently used, 0.
    std::thread::sleep(Duration::from_millis(20));
    c.fetch(&imgs[2].0, &cancel).await.unwrap(); // bump 2
    let _e1 = c.fetch(&imgs[1].0, &cancel).await.unwrap();
    assert!(!c.entry_path(&imgs[0].0.sha256).exists());
    assert!(c.entry_path(&imgs[2].0.sha256).exists());
}

#[tokio::test]
async fn bad_refs_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 30);
    let cancel = CancellationToken::new();
    let r = BfbRef {
        url: "http://x/y.bfb".into(),
        sha256: "abc".into(),
        ..Default::default()
    };
    let err = c.fetch(&r, &cancel).await.unwrap_err();
    assert!(
        matches!(err, CacheError::InvalidDigest { .. }) && err.to_string().contains("sha256"),
        "{err}"
    );
    let r = BfbRef {
        url: "ftp://x/y.bfb".into(),
        sha256: "a".repeat(64),
        ..Default::default()
    };
    let err = c.fetch(&r, &cancel).await.unwrap_err();
    assert!(
        matches!(err, CacheError::InvalidUrl { .. }) && err.to_string().contains("ftp"),
        "{err}"
    );
    assert_eq!(
        normalize_digest(&format!("sha256:{}", "AB".repeat(32))),
        Some("ab".repeat(32))
    );
    assert_eq!(
        redact_url("https://u:p@h/x.bfb?X-Amz-Signature=s"),
        "https://h/x.bfb?…"
    );
}

#[tokio::test]
async fn http_errors_name_status_and_are_not_retried_forever() {
    let srv = Arc::new(Srv {
        data: test_bfb(1000, 11),
        ..Default::default()
    });
    let addr = serve(srv).await;
    let dir = tempfile::tempdir().unwrap();
    let r = BfbRef {
        url: format!("http://{addr}/missing.bfb"),
        sha256: "a".repeat(64),
        ..Default::default()
    };
    let err = cache(dir.path(), 1 << 30)
        .fetch(&r, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Status { status: 404, .. }), "{err}");
    assert!(err.to_string().contains("missing.bfb"), "{err}");
}

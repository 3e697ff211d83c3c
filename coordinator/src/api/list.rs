//! List, a page at a time, every page of one listing read at the store
//! revision of its first page (see store/snapshot.rs).
//!
//! The page token is opaque to clients: hex of a format byte, the kind, the
//! snapshot revision, a digest of the filters (label_selector, node), the
//! name of the last object sent, and a checksum over all of it. A token
//! that does not check out, or that belongs to another listing, is
//! INVALID_ARGUMENT; one whose snapshot the history no longer holds is
//! ABORTED (list again).
use std::collections::HashMap;

use hostplane_proto::v1::{Kind, ListRequest, ListResponse, Resource};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{AdminApi, typed, validate};
use crate::store::PageLimit;

pub use hostplane_proto::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_BYTES, MAX_PAGE_SIZE};
/// Longer page tokens are refused unread.
const MAX_TOKEN_LEN: usize = hostplane_proto::limits::MAX_PAGE_TOKEN;

const TOKEN_FORMAT: u8 = 1;
const CHECKSUM_LEN: usize = 8;
const FILTER_DIGEST_LEN: usize = 8;

/// Page sizes of a server: the default, the maximum and the byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSizes {
    pub default_items: usize,
    pub max_items: usize,
    pub max_bytes: usize,
}

impl Default for PageSizes {
    fn default() -> Self {
        PageSizes {
            default_items: DEFAULT_PAGE_SIZE,
            max_items: MAX_PAGE_SIZE,
            max_bytes: MAX_PAGE_BYTES,
        }
    }
}

impl PageSizes {
    /// The page a request gets: 0 = the default, above the maximum = the maximum.
    fn limit(&self, page_size: i32) -> Result<PageLimit, ApiError> {
        let items = match usize::try_from(page_size) {
            Err(_) => {
                return Err(ApiError::invalid(
                    "page_size",
                    format!("{page_size} is negative; 0 asks for the server's default"),
                ));
            }
            Ok(0) => self.default_items,
            Ok(n) => n.min(self.max_items),
        };
        Ok(PageLimit {
            items: items.max(1),
            bytes: self.max_bytes,
        })
    }
}

/// Where a listing stands: its snapshot revision and the last name sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    kind: Kind,
    at: u64,
    filters: [u8; FILTER_DIGEST_LEN],
    after: String,
}

impl Cursor {
    fn encode(&self) -> String {
        let mut b = vec![TOKEN_FORMAT];
        b.extend_from_slice(&(self.kind as i32).to_be_bytes());
        b.extend_from_slice(&self.at.to_be_bytes());
        b.extend_from_slice(&self.filters);
        b.extend_from_slice(self.after.as_bytes());
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        hex::encode(b)
    }

    fn decode(token: &str) -> Result<Cursor, ApiError> {
        let bad = |why: &str| {
            ApiError::invalid(
                "page_token",
                format!(
                    "{why}; pass the previous page's next_page_token unchanged, or leave it empty to start again"
                ),
            )
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad(&format!(
                "is {} characters, longer than any token this server gives ({MAX_TOKEN_LEN})",
                token.len()
            )));
        }
        let b = hex::decode(token).map_err(|_| bad("is not a page token of this server"))?;
        const HEAD: usize = 1 + 4 + 8 + FILTER_DIGEST_LEN;
        if b.len() < HEAD + CHECKSUM_LEN {
            return Err(bad("is too short to be a page token"));
        }
        let (body, sum) = b.split_at(b.len() - CHECKSUM_LEN);
        if checksum(body) != sum {
            return Err(bad("is damaged (its checksum does not match)"));
        }
        if body[0] != TOKEN_FORMAT {
            return Err(bad("is of another token format"));
        }
        let kind = i32::from_be_bytes(body[1..5].try_into().unwrap_or_default());
        let kind = Kind::try_from(kind).map_err(|_| bad("names no kind"))?;
        let at = u64::from_be_bytes(body[5..13].try_into().unwrap_or_default());
        let mut filters = [0; FILTER_DIGEST_LEN];
        filters.copy_from_slice(&body[13..HEAD]);
        let after = String::from_utf8(body[HEAD..].to_vec()).map_err(|_| bad("is damaged"))?;
        if validate::name("page_token", &after).is_err() {
            return Err(bad("is damaged (no object name in it)"));
        }
        Ok(Cursor {
            kind,
            at,
            filters,
            after,
        })
    }
}

fn checksum(b: &[u8]) -> [u8; CHECKSUM_LEN] {
    let d = Sha256::digest(b);
    let mut out = [0; CHECKSUM_LEN];
    out.copy_from_slice(&d[..CHECKSUM_LEN]);
    out
}

/// A digest of what selects the objects, so a token is only used with the
/// filters of the listing that issued it.
fn filter_digest(labels: &HashMap<String, String>, node: &str) -> [u8; FILTER_DIGEST_LEN] {
    let mut pairs: Vec<_> = labels.iter().collect();
    pairs.sort();
    let mut h = Sha256::new();
    for (k, v) in pairs {
        for part in [k.as_bytes(), v.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.update([0xff]);
    h.update(node.as_bytes());
    let mut out = [0; FILTER_DIGEST_LEN];
    out.copy_from_slice(&h.finalize()[..FILTER_DIGEST_LEN]);
    out
}

impl AdminApi {
    pub(super) async fn list_resources(&self, req: ListRequest) -> Result<ListResponse, ApiError> {
        let kind = validate::kind("kind", req.kind)?;
        validate::labels("label_selector", &req.label_selector)?;
        if !req.node.is_empty() {
            if !matches!(kind, Kind::Device | Kind::Dpu) {
                return Err(ApiError::invalid(
                    "node",
                    "only devices and dpus can be filtered by node",
                ));
            }
            validate::name("node", &req.node)?;
        }
        let limit = self.pages.limit(req.page_size)?;
        let filters = filter_digest(&req.label_selector, &req.node);
        let cursor = if req.page_token.is_empty() {
            None
        } else {
            let c = Cursor::decode(&req.page_token)?;
            if c.kind != kind || c.filters != filters {
                return Err(ApiError::invalid(
                    "page_token",
                    "belongs to another listing: kind, label_selector and node must be those of the first page",
                ));
            }
            Some(c)
        };
        self.store
            .read_snapshot(move |t| {
                let current = t.revision()?;
                let (at, after) = match cursor {
                    None => (current, String::new()),
                    Some(c) if c.at > current => {
                        return Err(ApiError::invalid(
                            "page_token",
                            format!(
                                "reads at store revision {}, ahead of the store ({current}); leave it empty to start again",
                                c.at
                            ),
                        ));
                    }
                    Some(c) => (c.at, c.after),
                };
                let keep = |r: &Resource| {
                    let labels = r.metadata().map(|m| &m.labels);
                    req.label_selector
                        .iter()
                        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                        && (req.node.is_empty() || typed::node_of(r) == req.node)
                };
                let page = t.list_page(kind, at, &after, limit, &keep)?;
                let next_page_token = match page.items.last() {
                    Some(last) if page.more => Cursor {
                        kind,
                        at,
                        filters,
                        after: last.name().to_string(),
                    }
                    .encode(),
                    _ => String::new(),
                };
                Ok(ListResponse {
                    items: page.items,
                    resource_version: at,
                    next_page_token,
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            kind: Kind::Dpu,
            at: 4242,
            filters: filter_digest(&[("rack".to_string(), "r1".to_string())].into(), "n1"),
            after: "dpu-0017".into(),
        }
    }

    #[test]
    fn a_token_reads_back_as_it_was_written() {
        let c = cursor();
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn every_changed_character_of_a_token_is_refused() {
        let token = cursor().encode();
        for i in 0..token.len() {
            let mut t = token.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            let e = Cursor::decode(&t).unwrap_err();
            assert!(
                matches!(&e, ApiError::Invalid { field, .. } if field == "page_token"),
                "{e}"
            );
        }
        for bad in ["", "zz", "00", &token[..token.len() - 2], &"0".repeat(600)] {
            let e = Cursor::decode(bad).unwrap_err();
            assert!(e.to_string().starts_with("page_token: "), "{e}");
        }
    }

    #[test]
    fn filters_digest_is_order_free_and_tells_filters_apart() {
        let a: HashMap<_, _> = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        let b: HashMap<_, _> = [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into();
        assert_eq!(filter_digest(&a, ""), filter_digest(&b, ""));
        assert_ne!(filter_digest(&a, ""), filter_digest(&a, "n1"));
        let ab: HashMap<_, _> = [("a".to_string(), "b".to_string())].into();
        let a_b: HashMap<_, _> = [("ab".to_string(), String::new())].into();
        assert_ne!(filter_digest(&ab, ""), filter_digest(&a_b, ""));
    }

    #[test]
    fn page_size_zero_is_the_default_and_large_is_the_maximum() {
        let p = PageSizes::default();
        assert_eq!(p.limit(0).unwrap().items, DEFAULT_PAGE_SIZE);
        assert_eq!(p.limit(7).unwrap().items, 7);
        assert_eq!(p.limit(i32::MAX).unwrap().items, MAX_PAGE_SIZE);
        let e = p.limit(-1).unwrap_err();
        assert!(e.to_string().starts_with("page_size: -1 is negative"), "{e}");
    }
}

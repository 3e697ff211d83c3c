//! Paged List (issue 10): random fleets paged with random page sizes give
//! exactly what one List gives, in the same order, without duplicates; pages
//! read while other calls write still give the objects as they stood at the
//! first page (nothing that existed then is skipped or repeated, nothing
//! created since shows up); bad tokens and sizes are INVALID_ARGUMENT, a
//! snapshot the history no longer holds is ABORTED. The handler is called
//! through its gRPC trait, in process, on the store engine
//! `HOSTPLANE_TEST_STORE` picks (`tests/backend`).
mod backend;

use hostplane_coordinator::api::{AdminApi, MAX_PAGE_SIZE, PageSizes};
use hostplane_coordinator::store::Store;
use hostplane_proto::v1::admin_service_server::AdminService;
use hostplane_proto::v1::{
    CreateRequest, DeleteRequest, Flavor, FlavorSpec, Kind, ListRequest, ListResponse, Node, NodeSpec,
    ObjectMeta, Resource, UpdateRequest,
};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

fn api(store: Store, pages: PageSizes) -> AdminApi {
    AdminApi::new(store, CancellationToken::new()).with_page_sizes(pages)
}

fn small_pages(max_items: usize) -> PageSizes {
    PageSizes {
        default_items: max_items,
        max_items,
        ..PageSizes::default()
    }
}

fn node(name: &str, rack: u8) -> Resource {
    Node {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [("rack".to_string(), format!("r{rack}"))].into(),
            ..Default::default()
        }),
        spec: Some(NodeSpec { reboot_method: 1 }),
        status: None,
    }
    .into()
}

async fn create(a: &AdminApi, r: Resource) -> Resource {
    a.create(Request::new(CreateRequest { resource: Some(r) }))
        .await
        .unwrap()
        .into_inner()
}

async fn list(a: &AdminApi, req: ListRequest) -> Result<ListResponse, Status> {
    a.list(Request::new(req)).await.map(|r| r.into_inner())
}

fn nodes_req(page_size: i32, page_token: String) -> ListRequest {
    ListRequest {
        kind: Kind::Node as i32,
        page_size,
        page_token,
        ..Default::default()
    }
}

/// Every page of a listing; checks what holds for each page on the way.
async fn all_pages(a: &AdminApi, first: ListRequest) -> Result<(Vec<Resource>, u64, usize), Status> {
    let mut items = Vec::new();
    let mut req = first;
    let mut version = None;
    let mut pages = 0;
    loop {
        let page = list(a, req.clone()).await?;
        pages += 1;
        assert!(pages < 10_000, "a listing that does not end");
        let limit = usize::try_from(req.page_size).unwrap();
        assert!(
            page.items.len() <= limit,
            "{} items > page size {limit}",
            page.items.len()
        );
        assert_eq!(
            *version.get_or_insert(page.resource_version),
            page.resource_version,
            "every page of a listing reads at one revision"
        );
        if !page.next_page_token.is_empty() {
            assert!(
                !page.items.is_empty(),
                "a page that says more follows is never empty"
            );
        }
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return Ok((items, version.unwrap_or(0), pages));
        }
        req.page_token = page.next_page_token;
    }
}

fn names(items: &[Resource]) -> Vec<String> {
    items.iter().map(|r| r.name().to_string()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A write made between two pages.
#[derive(Debug, Clone)]
enum Write {
    Create(u16, u8),
    Delete(usize),
    Relabel(usize, u8),
}

fn write_strategy() -> impl Strategy<Value = Write> {
    prop_oneof![
        (0u16..400, 0u8..3).prop_map(|(n, r)| Write::Create(n, r)),
        (0usize..100).prop_map(Write::Delete),
        (0usize..100, 0u8..3).prop_map(|(i, r)| Write::Relabel(i, r)),
    ]
}

async fn apply_write(a: &AdminApi, existing: &[String], w: &Write) {
    match w {
        Write::Create(n, rack) => {
            // Names between the existing ones too, so some land before the cursor.
            let name = format!("n{n:03}x");
            let _ = a
                .create(Request::new(CreateRequest {
                    resource: Some(node(&name, *rack)),
                }))
                .await;
        }
        Write::Delete(i) if !existing.is_empty() => {
            let name = existing[i % existing.len()].clone();
            let _ = a
                .delete(Request::new(DeleteRequest {
                    kind: Kind::Node as i32,
                    name,
                    force: true,
                    resource_version: 0,
                }))
                .await;
        }
        Write::Relabel(i, rack) if !existing.is_empty() => {
            let name = &existing[i % existing.len()];
            let _ = a
                .update(Request::new(UpdateRequest {
                    resource: Some(node(name, *rack)),
                    update_mask: None,
                }))
                .await;
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Pages of any size add up to the one-page List: same objects, same
    /// order, no duplicates, with or without a label selector.
    #[test]
    fn pages_add_up_to_the_plain_list(
        fleet in proptest::collection::btree_map(0u16..1000, 0u8..3, 0..60),
        page_size in 1i32..12,
        selector in proptest::option::of(0u8..3),
    ) {
        runtime().block_on(async {
            let a = api(backend::store(), small_pages(MAX_PAGE_SIZE));
            for (n, rack) in &fleet {
                create(&a, node(&format!("n{n:03}"), *rack)).await;
            }
            let label_selector: std::collections::HashMap<String, String> = selector
                .map(|r| [("rack".to_string(), format!("r{r}"))].into())
                .unwrap_or_default();
            let plain = list(&a, ListRequest {
                kind: Kind::Node as i32,
                label_selector: label_selector.clone(),
                page_size: MAX_PAGE_SIZE as i32,
                ..Default::default()
            }).await.unwrap();
            prop_assert!(plain.next_page_token.is_empty());
            let (paged, version, pages) = all_pages(&a, ListRequest {
                kind: Kind::Node as i32,
                label_selector,
                page_size,
                ..Default::default()
            }).await.unwrap();
            prop_assert_eq!(&paged, &plain.items);
            prop_assert_eq!(version, plain.resource_version);
            let mut sorted = names(&paged);
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted, names(&paged), "in name order, each once");
            let want_pages = paged.len().div_ceil(page_size as usize).max(1);
            prop_assert_eq!(pages, want_pages);
            Ok(())
        })?;
    }

    /// Creates, deletes and relabels between pages: the listing is still
    /// the fleet as it stood at its first page.
    #[test]
    fn writes_between_pages_neither_skip_nor_repeat(
        fleet in proptest::collection::btree_map(0u16..400, 0u8..3, 1..50),
        page_size in 1i32..8,
        writes in proptest::collection::vec(proptest::collection::vec(write_strategy(), 0..5), 0..20),
    ) {
        runtime().block_on(async {
            let a = api(backend::store(), small_pages(MAX_PAGE_SIZE));
            for (n, rack) in &fleet {
                create(&a, node(&format!("n{n:03}"), *rack)).await;
            }
            let at_start = list(&a, nodes_req(MAX_PAGE_SIZE as i32, String::new())).await.unwrap();
            let mut got = Vec::new();
            let mut token = String::new();
            let mut round = 0;
            loop {
                let page = list(&a, nodes_req(page_size, token)).await.unwrap();
                prop_assert_eq!(page.resource_version, at_start.resource_version);
                got.extend(page.items);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
                let existing = names(&list(&a, nodes_req(MAX_PAGE_SIZE as i32, String::new())).await.unwrap().items);
                for w in writes.get(round).into_iter().flatten() {
                    apply_write(&a, &existing, w).await;
                }
                round += 1;
            }
            prop_assert_eq!(got, at_start.items);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn page_size_zero_is_the_default_and_larger_is_the_maximum() {
    let a = api(
        backend::store(),
        PageSizes {
            default_items: 3,
            max_items: 5,
            ..PageSizes::default()
        },
    );
    for i in 0..12 {
        create(&a, node(&format!("n{i:02}"), 0)).await;
    }
    let p = list(&a, nodes_req(0, String::new())).await.unwrap();
    assert_eq!(names(&p.items), ["n00", "n01", "n02"]);
    let p = list(&a, nodes_req(i32::MAX, p.next_page_token)).await.unwrap();
    assert_eq!(names(&p.items), ["n03", "n04", "n05", "n06", "n07"]);
    let p = list(&a, nodes_req(100, p.next_page_token)).await.unwrap();
    assert_eq!(names(&p.items), ["n08", "n09", "n10", "n11"]);
    assert!(p.next_page_token.is_empty(), "the last page has no token");
    // Exactly a page's worth: the last page still has no token.
    let p = list(&a, nodes_req(12, String::new())).await.unwrap();
    assert_eq!(p.items.len(), 5);
    let e = list(&a, nodes_req(-1, String::new())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("page_size: -1 is negative"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_page_stops_before_its_byte_budget_but_holds_at_least_one_object() {
    let a = api(
        backend::store(),
        PageSizes {
            max_bytes: 10_000,
            ..PageSizes::default()
        },
    );
    for i in 0..6 {
        let value = "x".repeat(if i == 3 { 30_000 } else { 4_000 });
        let f = Flavor {
            metadata: Some(ObjectMeta {
                name: format!("f{i}"),
                ..Default::default()
            }),
            spec: Some(FlavorSpec {
                bf_cfg: [("BIG".to_string(), value)].into(),
                ..Default::default()
            }),
        };
        create(&a, f.into()).await;
    }
    let req = ListRequest {
        kind: Kind::Flavor as i32,
        ..Default::default()
    };
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    let mut req = req;
    loop {
        let p = list(&a, req.clone()).await.unwrap();
        sizes.push(p.items.len());
        all.extend(p.items);
        if p.next_page_token.is_empty() {
            break;
        }
        req.page_token = p.next_page_token;
    }
    // Two ~4 kB flavors fit in 10 kB, a third does not; the 30 kB one alone.
    assert_eq!(sizes, [2, 1, 1, 2]);
    assert_eq!(names(&all), ["f0", "f1", "f2", "f3", "f4", "f5"]);
}

#[tokio::test]
async fn damaged_or_foreign_tokens_are_invalid_and_change_nothing() {
    let a = api(backend::store(), small_pages(2));
    for i in 0..5 {
        create(&a, node(&format!("n{i}"), i % 2)).await;
        let d = hostplane_proto::v1::Device {
            metadata: Some(ObjectMeta {
                name: format!("d{i}"),
                ..Default::default()
            }),
            spec: Some(hostplane_proto::v1::DeviceSpec {
                node: format!("n{i}"),
                serial: format!("SN{i}"),
                rshim: "rshim0".into(),
                ..Default::default()
            }),
            status: None,
        };
        create(&a, d.into()).await;
    }
    let first = list(&a, nodes_req(2, String::new())).await.unwrap();
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());

    let flipped = {
        let mut t = token.clone().into_bytes();
        let i = t.len() / 2;
        t[i] = if t[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(t).unwrap()
    };
    let cases: Vec<(ListRequest, &str)> = vec![
        (
            nodes_req(2, "not-a-token".into()),
            "page_token: is not a page token of this server",
        ),
        (nodes_req(2, flipped), "page_token: is damaged"),
        (
            nodes_req(2, token[..token.len() - 4].into()),
            "page_token: is damaged",
        ),
        (nodes_req(2, "ab".repeat(1000)), "page_token: is 2000 characters"),
        (
            ListRequest {
                kind: Kind::Device as i32,
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
            "page_token: belongs to another listing",
        ),
        (
            ListRequest {
                kind: Kind::Node as i32,
                label_selector: [("rack".to_string(), "r1".to_string())].into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
            "page_token: belongs to another listing",
        ),
    ];
    for (req, want) in cases {
        let e = list(&a, req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().starts_with(want), "{:?} vs {want:?}", e.message());
        assert!(e.message().len() < 300, "{}", e.message());
    }
    // The good token still works, and a page size that changes between pages is fine.
    let (rest, _, _) = all_pages(&a, nodes_req(1, token)).await.unwrap();
    assert_eq!(names(&rest), ["n2", "n3", "n4"]);
    // A Device listing's token, with its node filter, works for that listing.
    let on = ListRequest {
        kind: Kind::Device as i32,
        node: "n3".into(),
        page_size: 1,
        ..Default::default()
    };
    let (on_n3, _, _) = all_pages(&a, on).await.unwrap();
    assert_eq!(names(&on_n3), ["d3"]);
}

#[tokio::test]
async fn a_snapshot_the_history_no_longer_holds_is_aborted() {
    // History of 5 revisions: 20 writes between two pages outrun it.
    let a = api(backend::store_with_retention(5), small_pages(2));
    for i in 0..6 {
        create(&a, node(&format!("n{i}"), 0)).await;
    }
    let first = list(&a, nodes_req(2, String::new())).await.unwrap();
    for i in 0..20 {
        create(&a, node(&format!("m{i:02}"), 1)).await;
    }
    let e = list(&a, nodes_req(2, first.next_page_token)).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{}", e.message());
    assert!(
        e.message().contains("list again from the first page"),
        "{}",
        e.message()
    );
    // Starting again works, at the new revision.
    let (all, version, _) = all_pages(&a, nodes_req(2, String::new())).await.unwrap();
    assert_eq!(all.len(), 26);
    assert!(version > first.resource_version);
}

#[tokio::test]
async fn a_token_from_the_future_is_invalid() {
    // A token minted by one store is ahead of a younger one.
    let old = api(backend::store(), small_pages(1));
    for i in 0..3 {
        create(&old, node(&format!("n{i}"), 0)).await;
    }
    let token = list(&old, nodes_req(1, String::new()))
        .await
        .unwrap()
        .next_page_token;
    let young = api(backend::store(), small_pages(1));
    create(&young, node("n0", 0)).await;
    let e = list(&young, nodes_req(1, token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("ahead of the store"), "{}", e.message());
}

/// The revision a listing returns is where a Watch follows on: nothing
/// written after the first page is lost, whatever happens between pages.
#[tokio::test]
async fn watch_from_the_listing_version_sees_the_writes_between_pages() {
    use hostplane_proto::v1::WatchRequest;
    use tokio_stream::StreamExt;

    let a = api(backend::store(), small_pages(2));
    for i in 0..5 {
        create(&a, node(&format!("n{i}"), 0)).await;
    }
    let first = list(&a, nodes_req(2, String::new())).await.unwrap();
    create(&a, node("n9", 2)).await;
    let (all, version, _) = all_pages(&a, nodes_req(2, first.next_page_token.clone()))
        .await
        .unwrap();
    assert_eq!(names(&all), ["n2", "n3", "n4"], "n9 came after the snapshot");
    let mut events = a
        .watch(Request::new(WatchRequest {
            kinds: vec![Kind::Node as i32],
            from_version: version,
            name: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let ev = events.next().await.unwrap().unwrap();
    assert_eq!(ev.resource.unwrap().name(), "n9");
}

/// The coordinator binary seen by a client nobody here wrote: Python's
/// grpcio, from server reflection alone (coordinator/testdata/paging_client.py).
/// It pages with page_size 4 through 14 nodes and sends the Updates of
/// docs/api.md, a FieldMask in its proto3 JSON form.
#[test]
fn a_python_client_built_from_reflection_pages_and_masks() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let have = Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "python3 with grpcio and grpcio-reflection is needed: run scripts/setup"
    );
    // The binary on the config's store (`tests/backend`).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.yaml");
    std::fs::write(&config, backend::store_yaml(&dir.path().join("store.db"))).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _coordinator = Kill(
        Command::new(env!("CARGO_BIN_EXE_hostplane-coordinator"))
            .args(["--listen", &addr.to_string(), "--insecure", "--config"])
            .arg(&config)
            .env("HOSTPLANE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hostplane-coordinator"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the coordinator did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/paging_client.py");
    let out = Command::new("python3")
        .args([script, &addr.to_string(), "14", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let pages: Vec<Vec<String>> = serde_json::from_value(v["pages"].clone()).unwrap();
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4, 2]);
    let all: Vec<String> = pages.concat();
    let want: Vec<String> = (0..14).map(|i| format!("n{i:03}")).collect();
    assert_eq!(all, want);
    let versions: Vec<u64> = serde_json::from_value(v["versions"].clone()).unwrap();
    assert!(versions.iter().all(|x| *x == versions[0]), "{versions:?}");

    // proto3 JSON of the node: enum names, u64 as strings.
    let (before, labels_only, spec_only) = (&v["before"], &v["labels_only"], &v["spec_only"]);
    assert_eq!(before["spec"]["rebootMethod"], "REBOOT_METHOD_AGENT");
    assert_eq!(
        labels_only["spec"]["rebootMethod"], "REBOOT_METHOD_AGENT",
        "{labels_only}"
    );
    assert_eq!(labels_only["metadata"]["labels"]["rack"], "r7");
    assert_eq!(
        labels_only["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    assert_ne!(
        labels_only["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(
        spec_only["spec"]["rebootMethod"], "REBOOT_METHOD_EXTERNAL",
        "{spec_only}"
    );
    assert_eq!(spec_only["metadata"]["labels"]["rack"], "r7");
    assert_eq!(spec_only["metadata"]["generation"], "2");

    assert_eq!(
        v["unknown_path"]["code"], "INVALID_ARGUMENT",
        "{}",
        v["unknown_path"]
    );
    assert_eq!(
        v["unknown_path"]["message"],
        "update_mask.paths[0]: unknown field \"spec.no_such_field\" in NodeSpec"
    );
    assert_eq!(v["bad_token"]["code"], "INVALID_ARGUMENT", "{}", v["bad_token"]);
}

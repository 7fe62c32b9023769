use http_body_util::BodyExt as _;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::testing::listening_here;

async fn answer(admin: &Admin, method: Method, path: &str) -> (StatusCode, String, String) {
    let response = admin.respond(&method, path);
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    (status, content_type, body)
}

fn registry_with_a_counter() -> (Arc<Registry>, Counter) {
    let mut registry = Registry::with_prefix("test");
    let counter = Counter::<u64>::default();
    registry.register("things", "Things counted", counter.clone());
    (Arc::new(registry), counter)
}

#[tokio::test]
async fn readyz_follows_the_flag() {
    let flag = ReadyFlag::new("starting");
    let admin = Admin::new(flag.clone());
    assert_eq!(
        answer(&admin, Method::GET, "/readyz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8".to_owned(),
            "not ready: starting\n".to_owned()
        )
    );
    flag.set_ready();
    assert_eq!(
        answer(&admin, Method::GET, "/readyz").await.0,
        StatusCode::OK
    );
    flag.set_not_ready("draining");
    let (status, _, body) = answer(&admin, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: draining\n");
    // Health does not depend on readiness.
    assert_eq!(
        answer(&admin, Method::GET, "/healthz").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_closure_can_be_the_readiness() {
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = Admin::new({
        let draining = draining.clone();
        move || {
            if draining.load(std::sync::atomic::Ordering::Acquire) {
                Err("draining")
            } else {
                Ok(())
            }
        }
    });
    assert_eq!(
        answer(&admin, Method::GET, "/readyz").await.0,
        StatusCode::OK
    );
    draining.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(
        answer(&admin, Method::GET, "/readyz").await.2,
        "not ready: draining\n"
    );
}

#[tokio::test]
async fn metrics_come_from_the_registry() {
    let (registry, counter) = registry_with_a_counter();
    counter.inc_by(7);
    let admin = Admin::new(ReadyFlag::new("starting")).metrics(registry);
    let (status, content_type, body) = answer(&admin, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, OPENMETRICS);
    assert!(body.contains("test_things_total 7\n"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[tokio::test]
async fn without_a_registry_there_is_no_metrics_path() {
    let admin = Admin::new(ReadyFlag::new("starting"));
    let (status, _, body) = answer(&admin, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "not found: try /healthz, /readyz\n");
}

#[tokio::test]
async fn extra_routes_are_served_and_listed() {
    let (registry, _) = registry_with_a_counter();
    let admin = Admin::new(ReadyFlag::new("starting"))
        .metrics(registry)
        .route("/policy", || {
            response(StatusCode::OK, "application/json", "{}")
        })
        // Built-in paths win.
        .route("/healthz", || text(StatusCode::IM_A_TEAPOT, "shadowed\n"));
    assert_eq!(
        answer(&admin, Method::GET, "/policy").await,
        (
            StatusCode::OK,
            "application/json".to_owned(),
            "{}".to_owned()
        )
    );
    assert_eq!(
        answer(&admin, Method::GET, "/healthz").await.2,
        "ok\n".to_owned()
    );
    let (status, _, body) = answer(&admin, Method::GET, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        "not found: try /healthz, /readyz, /metrics, /policy\n"
    );
}

#[tokio::test]
async fn only_get_and_head_are_answered() {
    let admin = Admin::new(ReadyFlag::new("starting"));
    assert_eq!(
        answer(&admin, Method::HEAD, "/healthz").await.0,
        StatusCode::OK
    );
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        assert_eq!(
            answer(&admin, method.clone(), "/healthz").await.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
}

/// One HTTP/1.1 request with `Connection: close`; the whole response.
async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test]
async fn serves_over_tcp_until_stopped() {
    let flag = ReadyFlag::new("starting");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let server = tokio::spawn(Admin::new(flag.clone()).serve(listener, stop.clone()));

    let not_ready = get(addr, "/readyz").await.expect("readyz");
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    flag.set_ready();
    let ready = get(addr, "/readyz").await.expect("readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");

    assert!(
        listening_here(addr),
        "the running server's listener on {addr} is not found in /proc/net/tcp"
    );

    // An idle keep-alive connection does not hold the server up.
    let idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops at once")
        .expect("server task");
    drop(idle);
    assert!(
        !listening_here(addr),
        "this process still listens on {addr} after the server stopped"
    );
}

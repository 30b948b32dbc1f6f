//! Listeners and connections. The API listener can be closed and re-bound at
//! run time to emulate an outage (connection refused) and its recovery.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::app::App;
use crate::http::Body;

/// Binds with SO_REUSEADDR so the API port can be re-bound right after an
/// outage even while old connections linger in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Marks an answer never sent: the connection is closed instead.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the drop_requests fault")
    }
}

impl std::error::Error for DropConnection {}

/// Serves one connection until it ends, or until `outage` turns true, in which
/// case the connection is dropped (closed) mid-flight.
fn spawn_conn<F, Fut>(stream: TcpStream, handler: F, outage: Option<watch::Receiver<bool>>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let fut = handler(req);
            async move {
                let resp = fut.await;
                // A request the `drop_requests` fault takes: read and counted,
                // then its connection is closed with no answer (a reset).
                if resp.extensions().get::<DropConnection>().is_some() {
                    return Err(DropConnection);
                }
                Ok(resp)
            }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        match outage {
            None => {
                let _ = conn.await;
            }
            Some(mut rx) => {
                if *rx.borrow_and_update() {
                    return;
                }
                loop {
                    tokio::select! {
                        _ = &mut conn => return,
                        changed = rx.changed() => {
                            if changed.is_err() || *rx.borrow_and_update() {
                                return; // dropping `conn` closes the socket
                            }
                        }
                    }
                }
            }
        }
    });
}

pub async fn serve_admin(listener: TcpListener, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let app = app.clone();
                spawn_conn(
                    stream,
                    move |req| crate::admin::handle(app.clone(), req),
                    None,
                );
            }
            Err(e) => {
                eprintln!("llm-emulator: admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the API port; while `app.outage` is true the listener is closed.
pub async fn serve_api(first: TcpListener, addr: SocketAddr, app: Arc<App>) {
    let mut rx = app.outage.subscribe();
    let mut listener = Some(first);
    loop {
        while *rx.borrow_and_update() {
            listener = None; // close: new connections are refused
            app.listening.send_replace(false);
            if rx.changed().await.is_err() {
                return;
            }
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("llm-emulator: re-binding {addr} failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        app.listening.send_replace(true);
        loop {
            tokio::select! {
                r = l.accept() => match r {
                    Ok((stream, _)) => {
                        let app2 = app.clone();
                        spawn_conn(stream, move |req| crate::app::handle_api(app2.clone(), req), Some(rx.clone()));
                    }
                    Err(e) => {
                        eprintln!("llm-emulator: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *rx.borrow() {
                        break; // drops `l`
                    }
                }
            }
        }
    }
}

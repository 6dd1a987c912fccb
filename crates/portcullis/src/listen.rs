//! The accept loop every listener shares, whatever its protocol: each
//! connection runs on its own task (one client's failure never touches
//! another's), and a gauge counts the live ones so shutdown can wait for
//! their last records.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Counts live sessions: each holds a clone for its lifetime.
#[derive(Clone, Default)]
pub struct SessionGauge(Arc<()>);

impl SessionGauge {
    pub fn live(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }
}

/// Accepts connections until `shutdown` flips to true, running `session`
/// for each; sessions get their own clone of `shutdown` to end themselves.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: String,
    gauge: SessionGauge,
    mut shutdown: watch::Receiver<bool>,
    session: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let running = session(tcp, peer, shutdown.clone());
                    let gauge = gauge.clone();
                    tokio::spawn(async move {
                        running.await;
                        drop(gauge);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(connection = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

//! CancelRequest routing. Clients get a gateway-issued (pid, secret) pair so
//! upstream backend keys never leave the gateway; a cancel carrying our pair
//! is forwarded with the real key to the upstream that owns the backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::codec::startup::encode_cancel;

use super::upstream::UpstreamAddr;

/// Process ids we hand to clients; a newtype so they cannot be mixed up
/// with the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientPid(pub u32);

struct Entry {
    secret: u32,
    upstream_addr: UpstreamAddr,
    upstream_pid: u32,
    upstream_secret: u32,
    /// Woken by a matching cancel: a statement held for approval has no
    /// upstream query to cancel, so the session itself must hear it.
    cancelled: Arc<Notify>,
}

#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<ClientPid, Entry>>,
}

/// Removes the session's entry when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: ClientPid,
    pub secret: u32,
    /// Notified (waiters only) when the client sends a matching cancel.
    pub cancelled: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.entries.lock() {
            map.remove(&self.pid);
        }
    }
}

impl CancelRegistry {
    pub fn register(
        self: &Arc<Self>,
        upstream_addr: UpstreamAddr,
        upstream_key: (u32, u32),
    ) -> Option<Registration> {
        let mut map = self.entries.lock().ok()?;
        let pid = loop {
            let candidate = ClientPid(rand::random::<u32>() & 0x7fff_ffff);
            if candidate.0 != 0 && !map.contains_key(&candidate) {
                break candidate;
            }
        };
        let secret = rand::random();
        let cancelled = Arc::new(Notify::new());
        map.insert(
            pid,
            Entry {
                secret,
                upstream_addr,
                upstream_pid: upstream_key.0,
                upstream_secret: upstream_key.1,
                cancelled: cancelled.clone(),
            },
        );
        Some(Registration {
            registry: self.clone(),
            pid,
            secret,
            cancelled,
        })
    }

    /// Forwards a cancel when the pair matches a live session. Returns
    /// whether it was forwarded; a wrong secret is dropped silently, as
    /// PostgreSQL does, so the request cannot be used as an oracle.
    pub async fn cancel(&self, pid: u32, secret: u32) -> bool {
        let target = {
            let Ok(map) = self.entries.lock() else {
                return false;
            };
            match map.get(&ClientPid(pid)) {
                Some(e) if bool::from(e.secret.to_be_bytes().ct_eq(&secret.to_be_bytes())) => {
                    e.cancelled.notify_waiters();
                    Some((e.upstream_addr.clone(), e.upstream_pid, e.upstream_secret))
                }
                _ => None,
            }
        };
        let Some((addr, upid, usecret)) = target else {
            return false;
        };
        match addr.dial().await {
            Ok(mut s) => s.write_all(&encode_cancel(upid, usecret)).await.is_ok(),
            Err(e) => {
                tracing::warn!(upstream = %addr, error = %e, "cannot forward cancel request");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn futures_poll_once<F: std::future::Future>(
        f: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx)
    }

    #[tokio::test]
    async fn only_the_right_pair_wakes_the_session_and_entries_expire() {
        let registry = Arc::new(CancelRegistry::default());
        let upstream = UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let reg = registry.register(upstream, (42, 43)).unwrap();
        let heard = reg.cancelled.clone();
        let waiting = heard.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        assert!(!registry.cancel(reg.pid.0, reg.secret.wrapping_add(1)).await);
        assert!(
            futures_poll_once(waiting.as_mut()).is_pending(),
            "wrong secret wakes nobody"
        );
        // The right pair wakes the session even when the upstream is unreachable.
        assert!(!registry.cancel(reg.pid.0, reg.secret).await);
        assert!(futures_poll_once(waiting.as_mut()).is_ready());
        let pid = reg.pid.0;
        drop(reg);
        assert!(registry
            .entries
            .lock()
            .unwrap()
            .get(&ClientPid(pid))
            .is_none());
    }

    #[tokio::test]
    async fn a_cancel_reaches_a_unix_socket_upstream() {
        use tokio::io::AsyncReadExt;
        let (socket, listener) = crate::proxy::upstream::tests::FakeSocket::bind();
        let registry = Arc::new(CancelRegistry::default());
        let reg = registry
            .register(UpstreamAddr::Unix(socket.path.clone()), (42, 43))
            .unwrap();
        assert!(registry.cancel(reg.pid.0, reg.secret).await);
        let (mut upstream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        upstream.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, encode_cancel(42, 43).to_vec());
    }
}

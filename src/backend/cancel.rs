//! Query cancellation. Each client gets a proxy-issued (pid, secret) key at
//! login; a CancelRequest carrying it is forwarded to whichever server
//! connection the client is using at that moment, with that server's key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::conn::ServerTarget;
use crate::protocol::CANCEL_REQUEST_CODE;

/// The server connection a client is using right now, as far as cancelling goes.
/// The server is shared with its connection (set at every checkout, so no
/// copy of the host name per transaction).
#[derive(Debug, Clone)]
struct CancelTarget {
    server: Arc<ServerTarget>,
    pid: i32,
    secret: i32,
}

/// Per client: its key, and the server it is currently attached to.
pub struct CancelSlot {
    pub pid: i32,
    pub secret: i32,
    target: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    pub fn set(&self, server: &Arc<ServerTarget>, pid: i32, secret: i32) {
        if let Ok(mut t) = self.target.lock() {
            *t = Some(CancelTarget {
                server: server.clone(),
                pid,
                secret,
            });
        }
    }

    pub fn clear(&self) {
        if let Ok(mut t) = self.target.lock() {
            *t = None;
        }
    }

    /// Cancel whatever the client's server is running (the proxy's own
    /// statement timeout). Returns when the request was delivered or failed.
    pub async fn cancel_running(&self, timeout: Duration) {
        let target = self.target.lock().ok().and_then(|t| t.clone());
        if let Some(t) = target {
            t.send(self.pid, timeout).await;
        }
    }
}

impl CancelTarget {
    /// Deliver a CancelRequest to the server; `pid` is the client's, for logs.
    async fn send(&self, pid: i32, timeout: Duration) {
        let send = async {
            let mut s = TcpStream::connect((self.server.host.as_str(), self.server.port)).await?;
            let mut msg = BytesMut::with_capacity(16);
            msg.put_i32(16);
            msg.put_i32(CANCEL_REQUEST_CODE);
            msg.put_i32(self.pid);
            msg.put_i32(self.secret);
            s.write_all(&msg).await?;
            s.shutdown().await
        };
        let server = format!("{}:{}", self.server.host, self.server.port);
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(())) => tracing::info!(pid, %server, "forwarded cancel request"),
            Ok(Err(e)) => {
                tracing::warn!(pid, %server, error = %e, "could not forward cancel request")
            }
            Err(_) => tracing::warn!(pid, %server, "timed out forwarding cancel request"),
        }
    }
}

/// All live clients' cancel slots, by proxy-issued pid.
#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

impl CancelRegistry {
    /// Issue a fresh key for a new client. A client that keeps one server
    /// for its whole session (session pooling) is given that server's pid
    /// (`server_pid`), so `pg_backend_pid()`, `pg_stat_activity` and the
    /// sender of its own notifications match what it was told, as with
    /// PostgreSQL alone; the secret is still the proxy's. Another client
    /// holding the same pid (a server of another host) gets a made-up one.
    pub fn register(&self, server_pid: Option<i32>) -> Arc<CancelSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted = server_pid.filter(|p| *p > 0);
        loop {
            let pid = wanted
                .take()
                .unwrap_or_else(|| (rand::random::<u32>() >> 1) as i32);
            if pid == 0 || slots.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                pid,
                secret: rand::random::<i32>(),
                target: Mutex::new(None),
            });
            slots.insert(pid, slot.clone());
            return slot;
        }
    }

    pub fn unregister(&self, pid: i32) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&pid);
        }
    }

    /// Handle a CancelRequest. Like PostgreSQL, a wrong key or an idle client
    /// is ignored silently (the requester learns nothing either way).
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration) {
        let target = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(&pid) {
                Some(slot) if slot.secret == secret => {
                    slot.target.lock().ok().and_then(|t| t.clone())
                }
                _ => None,
            }
        };
        match target {
            Some(t) => t.send(pid, timeout).await,
            None => tracing::debug!(pid, "cancel request for no running query"),
        }
    }
}

//! `run --takeover`: a running instance hands its listening sockets (SCM_RIGHTS) and its live
//! state (JSON) to a successor over a Unix socket, then stops accepting and drains.
//!
//! The exchange, on one connection to `server.takeover_socket`:
//! 1. the successor connects; the running instance holds its control task still and sends one
//!    byte carrying the descriptors (proxy sockets, TLS sockets, admin socket, the takeover
//!    socket itself), then a length-prefixed JSON [`Header`] with the live state;
//! 2. the successor starts serving on those sockets and writes [`GO`];
//! 3. the running instance stops accepting, writes [`DONE`], drains and exits 0.
//!
//! The sockets are the same kernel sockets throughout, so a connection that arrives during
//! the handover waits in their backlog for whichever process accepts first: none is refused.
//! If the successor goes away before step 2, the running instance goes on as before.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::control::{ControlError, ControlHandle, ControlState};
use crate::fleet::shared::SharedState;
use crate::server::Sockets;

/// The successor has started serving on the sockets.
const GO: u8 = b'G';
/// The predecessor has stopped accepting.
const DONE: u8 = b'D';
/// How long either side waits for the other: a successor builds its first table and loads
/// its certificates between receiving and [`GO`].
const PATIENCE: Duration = Duration::from_secs(30);
/// The most descriptors one message carries (Linux's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// What the successor serves from the start: the live fields (weights, active pools,
/// drains), rollback histories and rollout progress, whether they were persisted, and the
/// fleet replica name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveState {
    pub state: SharedState,
    pub persisted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl LiveState {
    pub fn of(state: &ControlState) -> LiveState {
        LiveState {
            state: SharedState::of_state(state),
            persisted: state.status_view().persisted,
            replica: state.config().cluster.as_ref().map(|c| c.name.clone()),
        }
    }

    /// Makes `state` serve this, at the same generation. A service, pool or endpoint the
    /// successor's file lacks is skipped, as a fleet replica skips it.
    pub fn restore(&self, state: &mut ControlState) -> Result<(), ControlError> {
        state.adopt(|c| self.state.apply_to(c), self.state.generation)?;
        self.state.restore_into(state);
        state.set_persisted(self.persisted);
        Ok(())
    }
}

/// Sent after the descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// The predecessor's process id, for the log.
    pid: u32,
    /// How many of the descriptors are proxy sockets, then TLS sockets; the admin socket and
    /// the takeover socket follow.
    plain: usize,
    tls: usize,
    live: LiveState,
}

/// What a successor received.
pub struct Inherited {
    pub sockets: Sockets,
    pub admin: std::net::TcpListener,
    pub live: LiveState,
    /// The predecessor's process id.
    pub pid: u32,
}

/// The rest of the exchange, once the successor serves.
pub struct Handshake {
    listener: UnixListener,
    conn: UnixStream,
}

impl Handshake {
    /// Tells the predecessor to stop accepting and waits until it has; returns the takeover
    /// socket, to serve the next successor on.
    pub fn confirm(mut self) -> io::Result<UnixListener> {
        self.conn.write_all(&[GO])?;
        let mut done = [0u8; 1];
        // Past GO the predecessor stops (or has died): either way this instance serves from
        // now on, so a missing answer is worth a warning, not an exit.
        match self.conn.read_exact(&mut done) {
            Ok(()) if done[0] == DONE => {}
            Ok(()) => warn!("unexpected answer from the predecessor; serving"),
            Err(e) => warn!(error = %e, "the predecessor did not confirm it stopped; serving"),
        }
        Ok(self.listener)
    }
}

/// Connects to a running instance at `path` and receives its sockets and live state; `None`
/// when no instance listens there.
pub fn connect(path: &Path) -> io::Result<Option<(Inherited, Handshake)>> {
    let conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    conn.set_read_timeout(Some(PATIENCE))?;
    conn.set_write_timeout(Some(PATIENCE))?;
    let mut fds = receive_fds(&conn)?;
    let mut len = [0u8; 4];
    (&conn).read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    (&conn).read_exact(&mut body)?;
    let header: Header = serde_json::from_slice(&body).map_err(io::Error::other)?;
    if fds.len() != header.plain + header.tls + 2 {
        return Err(io::Error::other(format!(
            "received {} sockets, expected {}",
            fds.len(),
            header.plain + header.tls + 2
        )));
    }
    let listener = UnixListener::from(fds.pop().ok_or_else(missing)?);
    let admin = std::net::TcpListener::from(fds.pop().ok_or_else(missing)?);
    let tls = fds.split_off(header.plain);
    let tcp = |v: Vec<OwnedFd>| v.into_iter().map(std::net::TcpListener::from).collect();
    let inherited = Inherited {
        sockets: Sockets {
            plain: tcp(fds),
            tls: tcp(tls),
        },
        admin,
        live: header.live,
        pid: header.pid,
    };
    Ok(Some((inherited, Handshake { listener, conn })))
}

fn missing() -> io::Error {
    io::Error::other("a socket is missing")
}

fn receive_fds(conn: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the running instance closed the takeover connection",
        ));
    }
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    Ok(fds)
}

/// Binds the takeover socket at `path`. A socket file nobody listens on is a previous run's
/// and is replaced; one a live instance listens on is an error (that instance would hand its
/// listeners to whichever of the two asked).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "server.takeover_socket {}: a running switchyard listens there (start with --takeover to take over from it, or give this config another takeover_socket)",
                path.display()
            ),
        ));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("server.takeover_socket {}: {e}", path.display()),
        )
    })
}

/// What a running instance hands over and how it stops.
pub struct Predecessor<'a> {
    pub control: &'a ControlHandle,
    /// Copies of the proxy and TLS sockets, and of the admin socket.
    pub sockets: &'a dyn Fn() -> io::Result<(Sockets, std::net::TcpListener)>,
    /// Stops accepting (on every listener, the admin one too).
    pub stop: &'a dyn Fn(),
}

/// Serves successors on `listener` until one has taken over (then returns `Ok`).
pub async fn serve(listener: UnixListener, me: Predecessor<'_>) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                warn!(error = %e, "takeover socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(live) = me.control.hand_over(LiveState::of).await else {
            warn!("takeover refused: the control task has stopped");
            continue;
        };
        info!("a successor asks to take over: handing the listeners over");
        let handed = conn
            .into_std()
            .and_then(|c| {
                c.set_nonblocking(false)?;
                Ok(c)
            })
            .and_then(|c| hand_over(&c, &listener, &me, live).map(|()| c));
        match handed {
            // The caller says so in its log, once.
            Ok(_conn) => return Ok(()),
            Err(e) => {
                warn!(error = %e, "the takeover did not happen: serving on");
                me.control.resume().await;
            }
        }
    }
}

/// Steps 1 and 3 of the exchange, on the running instance's side.
fn hand_over(
    conn: &UnixStream,
    listener: &tokio::net::UnixListener,
    me: &Predecessor<'_>,
    live: LiveState,
) -> io::Result<()> {
    conn.set_read_timeout(Some(PATIENCE))?;
    conn.set_write_timeout(Some(PATIENCE))?;
    let (sockets, admin) = (me.sockets)()?;
    let header = Header {
        pid: std::process::id(),
        plain: sockets.plain.len(),
        tls: sockets.tls.len(),
        live,
    };
    let mut fds: Vec<BorrowedFd<'_>> = sockets
        .plain
        .iter()
        .chain(&sockets.tls)
        .map(AsFd::as_fd)
        .collect();
    fds.push(admin.as_fd());
    fds.push(listener.as_fd());
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} sockets are more than one message carries ({MAX_FDS}): fewer workers",
            fds.len()
        )));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("the sockets do not fit the message"));
    }
    rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&[0])],
        &mut control,
        SendFlags::empty(),
    )?;
    let body = serde_json::to_vec(&header).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut w = conn;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    let mut go = [0u8; 1];
    (&*conn).read_exact(&mut go)?;
    if go[0] != GO {
        return Err(io::Error::other("unexpected answer from the successor"));
    }
    (me.stop)();
    // Stopped for good: the successor serves, whether or not it hears this.
    let _ = w.write_all(&[DONE]);
    Ok(())
}

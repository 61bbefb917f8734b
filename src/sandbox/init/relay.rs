//! The network relay of `airut-init`, inside the container (std only).
//!
//! The container has only a loopback interface (`--network none`); the one
//! way out is the per-task unix socket mounted from the airut server. The
//! relay:
//! * answers DNS on 127.0.0.1:53 over UDP and TCP: every A query gets
//!   127.0.0.1 (TTL 60), every other type an empty answer, so no query ever
//!   leaves the container; each query is reported to the proxy (a PROXY v2
//!   `LOCAL` header with a 0xE0 TLV: qtype, name) for the audit log;
//! * listens on 127.0.0.1:80 and :443 and carries each connection over the
//!   socket, prefixed by a PROXY v2 header whose destination port says
//!   which of the two it was.
//!
//! If the socket is gone, every relayed connection is closed at once; if
//! the relay is gone, nothing listens: either way there is no network.
//! Keep the header bytes in step with `src/proxy/relay_header.rs` (the
//! proxy tests run this file against it).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Most relayed connections at once (each costs two threads).
const MAX_CONNECTIONS: usize = 1024;

/// The PROXY v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// TLV type of a DNS report.
const TLV_DNS_QUERY: u8 = 0xE0;

/// Where the relay listens.
#[derive(Debug, Clone, Copy)]
pub struct RelayAddrs {
    /// DNS, UDP and TCP.
    pub dns: SocketAddr,
    /// Relayed as port 80.
    pub http: SocketAddr,
    /// Relayed as port 443.
    pub https: SocketAddr,
}

/// Starts the relay on the container's loopback (53, 80, 443) towards
/// `socket`. Returns once every listener is bound; serving goes on in
/// threads for the life of the process.
pub fn spawn(socket: &Path) -> io::Result<()> {
    let lo = Ipv4Addr::LOCALHOST;
    spawn_on(
        socket,
        RelayAddrs {
            dns: SocketAddr::from((lo, 53)),
            http: SocketAddr::from((lo, 80)),
            https: SocketAddr::from((lo, 443)),
        },
    )
    .map(|_| ())
}

/// Like [`spawn`] on chosen addresses (port 0 = any); returns the bound
/// addresses. The relayed port in the header is 80 or 443 by role, not
/// the listening port.
pub fn spawn_on(socket: &Path, addrs: RelayAddrs) -> io::Result<RelayAddrs> {
    let udp = UdpSocket::bind(addrs.dns)?;
    let dns = udp.local_addr()?;
    let dns_tcp = TcpListener::bind(dns)?;
    let http = TcpListener::bind(addrs.http)?;
    let https = TcpListener::bind(addrs.https)?;
    let bound = RelayAddrs {
        dns,
        http: http.local_addr()?,
        https: https.local_addr()?,
    };
    let socket: Arc<PathBuf> = Arc::new(socket.to_owned());
    let open = Arc::new(AtomicUsize::new(0));
    {
        let socket = Arc::clone(&socket);
        std::thread::Builder::new()
            .name("relay-dns-udp".into())
            .spawn(move || dns_udp(udp, &socket))?;
    }
    {
        let socket = Arc::clone(&socket);
        let open = Arc::clone(&open);
        std::thread::Builder::new()
            .name("relay-dns-tcp".into())
            .spawn(move || accept_loop(dns_tcp, open, move |s| dns_tcp_conn(s, &socket)))?;
    }
    for (listener, port, name) in [(http, 80u16, "relay-80"), (https, 443u16, "relay-443")] {
        let socket = Arc::clone(&socket);
        let open = Arc::clone(&open);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || accept_loop(listener, open, move |s| relay(s, &socket, port)))?;
    }
    Ok(bound)
}

/// Accepts forever; each connection in its own thread, within the cap.
fn accept_loop<F>(listener: TcpListener, open: Arc<AtomicUsize>, handler: F)
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed
        }
        let handler = Arc::clone(&handler);
        let open2 = Arc::clone(&open);
        let spawned = std::thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || {
                handler(stream);
                open2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Carries one TCP connection over the task socket.
fn relay(tcp: TcpStream, socket: &Path, port: u16) {
    let src_port = tcp.peer_addr().map(|a| a.port()).unwrap_or(0);
    let Ok(mut unix) = UnixStream::connect(socket) else {
        // No socket, no network.
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    };
    let mut header = Vec::with_capacity(28);
    header.extend_from_slice(&SIGNATURE);
    header.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    header.extend_from_slice(&src_port.to_be_bytes());
    header.extend_from_slice(&port.to_be_bytes());
    if unix.write_all(&header).is_err() {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .name("relay-up".into())
        .spawn(move || {
            let _ = io::copy(&mut tcp_r, &mut unix_w);
            let _ = unix_w.shutdown(Shutdown::Write);
        });
    let mut tcp_w = tcp;
    let _ = io::copy(&mut unix, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    if let Ok(h) = up {
        let _ = h.join();
    }
}

fn dns_udp(udp: UdpSocket, socket: &Path) {
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf) else {
            continue;
        };
        let Some(query) = buf.get(..n) else { continue };
        if let Some((reply, report)) = answer(query) {
            let _ = udp.send_to(&reply, peer);
            if let Some((qtype, name)) = report {
                report_query(socket, qtype, &name);
            }
        }
    }
}

fn dns_tcp_conn(mut tcp: TcpStream, socket: &Path) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        let mut len = [0u8; 2];
        if tcp.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if tcp.read_exact(&mut query).is_err() {
            return;
        }
        let Some((reply, report)) = answer(&query) else {
            return;
        };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if tcp.write_all(&out).is_err() {
            return;
        }
        if let Some((qtype, name)) = report {
            report_query(socket, qtype, &name);
        }
    }
}

/// Tells the proxy about one query (best effort: the answer never
/// depends on it).
fn report_query(socket: &Path, qtype: u16, name: &[u8]) {
    let name = name.get(..name.len().min(255)).unwrap_or_default();
    let tlv_len = 2 + name.len();
    let mut out = Vec::with_capacity(19 + tlv_len);
    out.extend_from_slice(&SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00]);
    out.extend_from_slice(&((3 + tlv_len) as u16).to_be_bytes());
    out.push(TLV_DNS_QUERY);
    out.extend_from_slice(&(tlv_len as u16).to_be_bytes());
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(name);
    if let Ok(mut s) = UnixStream::connect(socket) {
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(&out);
    }
}

/// The reply to one DNS message and, when it held a question, what to
/// report (qtype, dotted name). `None`: too short to answer at all.
#[allow(clippy::type_complexity)]
fn answer(q: &[u8]) -> Option<(Vec<u8>, Option<(u16, Vec<u8>)>)> {
    let header = q.get(..12)?;
    let id = [*header.first()?, *header.get(1)?];
    let flags_in = *header.get(2)?;
    if flags_in & 0x80 != 0 {
        return None; // a response, not a query: ignore
    }
    let opcode = (flags_in >> 3) & 0x0f;
    let rd = flags_in & 0x01;
    let qdcount = u16::from_be_bytes([*header.get(4)?, *header.get(5)?]);
    let reply_head = |rcode: u8, qd: u16, an: u16| {
        let mut r = Vec::with_capacity(64);
        r.extend_from_slice(&id);
        r.push(0x80 | (opcode << 3) | 0x04 | rd); // QR, AA, RD copied
        r.push(0x80 | rcode); // RA
        r.extend_from_slice(&qd.to_be_bytes());
        r.extend_from_slice(&an.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r
    };
    if opcode != 0 {
        return Some((reply_head(4, 0, 0), None)); // NOTIMP
    }
    if qdcount == 0 {
        return Some((reply_head(1, 0, 0), None)); // FORMERR
    }
    // The first question: labels without compression.
    let mut i = 12usize;
    let mut name: Vec<u8> = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len >= 0x40 || name.len() + len > 253 {
            return Some((reply_head(1, 0, 0), None));
        }
        let label = q.get(i + 1..i + 1 + len)?;
        if !name.is_empty() {
            name.push(b'.');
        }
        name.extend_from_slice(label);
        i += 1 + len;
    }
    let Some(qtail) = q.get(i..i + 4) else {
        return Some((reply_head(1, 0, 0), None));
    };
    let qtype = u16::from_be_bytes([*qtail.first()?, *qtail.get(1)?]);
    let question = q.get(12..i + 4)?;
    let is_a = qtype == 1;
    let mut r = reply_head(0, 1, u16::from(is_a));
    r.extend_from_slice(question);
    if is_a {
        // Name pointer to the question, A, IN, TTL 60, 4 bytes, 127.0.0.1.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((r, Some((qtype, name))))
}

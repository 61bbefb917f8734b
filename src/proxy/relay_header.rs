//! The header the in-container relay sends first on each connection: a
//! PROXY protocol v2 header.
//!
//! * `PROXY` command, TCP over IPv4/IPv6: a relayed connection; the
//!   destination port is the port the client dialled inside the container.
//!   Only 80 and 443 are accepted.
//! * `LOCAL` command with TLVs of type [`TLV_DNS_QUERY`]: a DNS query the
//!   relay answered (u16 qtype, big-endian, then the name as sent).
//!
//! The socket is reachable by the agent (root in the container), so every
//! field is an untrusted claim: validated here, recorded as a claim.
//! Called by `accept.rs`; the relay side that writes it lives in
//! `src/sandbox/init/relay.rs` (kept byte-compatible by the tests).

#![deny(clippy::indexing_slicing)]

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte PROXY v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// TLV type carrying one DNS query report (in the custom range 0xE0-0xEF).
pub const TLV_DNS_QUERY: u8 = 0xE0;

/// Largest header body accepted (addresses + TLVs).
pub const MAX_BODY: usize = 4096;

/// Longest DNS name accepted in a report.
pub const MAX_NAME: usize = 255;

/// What a connection on the task socket carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayHeader {
    /// A relayed TCP connection to the given container port (80 or 443).
    Connection {
        /// The port the client dialled.
        port: u16,
    },
    /// DNS queries the relay answered.
    Dns(Vec<DnsReport>),
}

/// One reported DNS query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReport {
    /// The query type.
    pub qtype: u16,
    /// The name, printable ASCII (anything else escaped as `\xNN`).
    pub name: String,
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Not a PROXY v2 header, or malformed.
    #[error("malformed relay header: {0}")]
    Malformed(&'static str),
    /// A port other than 80 or 443 was claimed.
    #[error("relay header claims port {0}; only 80 and 443 are relayed")]
    Port(u16),
    /// Reading failed (closed early, timeout handled by the caller).
    #[error("reading the relay header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and validates one header from the start of a connection.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<RelayHeader, HeaderError> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head).await?;
    let (sig, rest) = head.split_at(12);
    if sig != SIGNATURE {
        return Err(HeaderError::Malformed("no PROXY v2 signature"));
    }
    let [ver_cmd, fam, len_hi, len_lo] =
        <[u8; 4]>::try_from(rest).map_err(|_| HeaderError::Malformed("short header"))?;
    let len = u16::from_be_bytes([len_hi, len_lo]) as usize;
    if len > MAX_BODY {
        return Err(HeaderError::Malformed("header too long"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    parse(ver_cmd, fam, &body)
}

/// Parses the part after the 16 fixed bytes.
pub fn parse(ver_cmd: u8, fam: u8, body: &[u8]) -> Result<RelayHeader, HeaderError> {
    match ver_cmd {
        0x21 => {
            let (addr_len, port_at) = match fam {
                0x11 => (12, 10),
                0x21 => (36, 34),
                _ => return Err(HeaderError::Malformed("not TCP over IPv4 or IPv6")),
            };
            if body.len() < addr_len {
                return Err(HeaderError::Malformed("address block too short"));
            }
            let port = body
                .get(port_at..port_at + 2)
                .map(|b| {
                    u16::from_be_bytes([
                        b.first().copied().unwrap_or(0),
                        b.get(1).copied().unwrap_or(0),
                    ])
                })
                .ok_or(HeaderError::Malformed("address block too short"))?;
            match port {
                80 | 443 => Ok(RelayHeader::Connection { port }),
                p => Err(HeaderError::Port(p)),
            }
        }
        0x20 => {
            // LOCAL: the address block is ignored when the family is
            // UNSPEC; our relay always sends UNSPEC, then TLVs.
            if fam != 0x00 {
                return Err(HeaderError::Malformed(
                    "LOCAL header with an address family",
                ));
            }
            let mut reports = Vec::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (t, l) = match rest {
                    [t, hi, lo, ..] => (*t, u16::from_be_bytes([*hi, *lo]) as usize),
                    _ => return Err(HeaderError::Malformed("truncated TLV")),
                };
                let value = rest
                    .get(3..3 + l)
                    .ok_or(HeaderError::Malformed("truncated TLV"))?;
                rest = rest.get(3 + l..).unwrap_or_default();
                if t != TLV_DNS_QUERY {
                    continue;
                }
                let (qtype, name) = match value {
                    [hi, lo, name @ ..] => (u16::from_be_bytes([*hi, *lo]), name),
                    _ => return Err(HeaderError::Malformed("short DNS report")),
                };
                if name.is_empty() || name.len() > MAX_NAME {
                    return Err(HeaderError::Malformed("DNS name empty or too long"));
                }
                reports.push(DnsReport {
                    qtype,
                    name: printable(name),
                });
            }
            if reports.is_empty() {
                return Err(HeaderError::Malformed("LOCAL header without a DNS report"));
            }
            Ok(RelayHeader::Dns(reports))
        }
        _ => Err(HeaderError::Malformed("unknown version or command")),
    }
}

/// Encodes a relayed-connection header (IPv4 loopback addresses).
pub fn encode_connection(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&SIGNATURE);
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    out.extend_from_slice(&src_port.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out
}

/// Encodes a DNS report header.
pub fn encode_dns(qtype: u16, name: &[u8]) -> Vec<u8> {
    let name = name.get(..name.len().min(MAX_NAME)).unwrap_or_default();
    let tlv_len = 2 + name.len();
    let mut out = Vec::with_capacity(16 + 3 + tlv_len);
    out.extend_from_slice(&SIGNATURE);
    out.extend_from_slice(&[0x20, 0x00]);
    out.extend_from_slice(&((3 + tlv_len) as u16).to_be_bytes());
    out.push(TLV_DNS_QUERY);
    out.extend_from_slice(&(tlv_len as u16).to_be_bytes());
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(name);
    out
}

/// Printable ASCII as is; every other byte as `\xNN`.
fn printable(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    async fn read_bytes(bytes: &[u8]) -> Result<RelayHeader, HeaderError> {
        let mut r = bytes;
        read(&mut r).await
    }

    #[tokio::test]
    async fn round_trips() {
        assert_eq!(
            read_bytes(&encode_connection(5555, 443)).await.unwrap(),
            RelayHeader::Connection { port: 443 }
        );
        assert_eq!(
            read_bytes(&encode_dns(28, b"evil.example")).await.unwrap(),
            RelayHeader::Dns(vec![DnsReport {
                qtype: 28,
                name: "evil.example".into()
            }])
        );
        assert_eq!(
            read_bytes(&encode_dns(1, b"a b\x00\\")).await.unwrap(),
            RelayHeader::Dns(vec![DnsReport {
                qtype: 1,
                name: "a\\x20b\\x00\\x5c".into()
            }])
        );
    }

    #[tokio::test]
    async fn refuses_bad_headers() {
        assert!(matches!(
            read_bytes(&encode_connection(1, 22)).await,
            Err(HeaderError::Port(22))
        ));
        let mut bad_sig = encode_connection(1, 443);
        bad_sig[0] = b'G';
        assert!(matches!(
            read_bytes(&bad_sig).await,
            Err(HeaderError::Malformed(_))
        ));
        // Truncated body.
        let full = encode_connection(1, 443);
        assert!(matches!(
            read_bytes(&full[..20]).await,
            Err(HeaderError::Io(_))
        ));
        // Over-long declared length.
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_bytes(&long).await,
            Err(HeaderError::Malformed(_))
        ));
        // UDP family, unknown command, LOCAL without report, truncated TLV.
        for (vc, fam, body) in [
            (0x21u8, 0x12u8, vec![0u8; 12]),
            (0x22, 0x11, vec![0; 12]),
            (0x20, 0x00, vec![]),
            (0x20, 0x00, vec![TLV_DNS_QUERY, 0, 9, 0, 1]),
            (0x20, 0x00, vec![TLV_DNS_QUERY, 0, 2, 0, 1]),
            (0x21, 0x11, vec![0; 4]),
        ] {
            assert!(parse(vc, fam, &body).is_err(), "{vc:x} {fam:x} {body:?}");
        }
        // Every byte string of a short length: no panic.
        for len in 0..40u8 {
            let body: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            let _ = parse(0x20, 0x00, &body);
            let _ = parse(0x21, 0x11, &body);
            let _ = parse(0x21, 0x21, &body);
        }
    }
}

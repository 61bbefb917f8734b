//! The network relay seam of `airut-init`: answers DNS inside the
//! container and relays 80/443 to the per-task proxy socket. Written by the
//! network sandbox work; until then it refuses, so the init fails closed.

/// Starts the relay on `socket` (the mounted per-task proxy socket).
pub fn spawn(socket: &std::path::Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("the relay to {} is not built yet", socket.display()),
    ))
}

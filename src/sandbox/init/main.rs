//! `airut-init`: the entrypoint of every task container (architecture §4).
//!
//! Mounted read-only at `/opt/airut/init` and linked statically, so it runs
//! in any image. Usage: `airut-init PROGRAM [ARGS...]`. It:
//! * stays PID 1: starts PROGRAM as its child, forwards SIGTERM and SIGINT
//!   to it, reaps every zombie (orphans are re-parented to PID 1), and exits
//!   with the child's status (128 + signal when it was killed);
//! * sets `IS_SANDBOX=1` for the child (Claude Code refuses
//!   `--dangerously-skip-permissions` as root without it);
//! * installs the task CA from `/run/airut/ca.crt`, when mounted, into the
//!   image's trust store, and points Node, OpenSSL and curl at it;
//! * when the proxy socket `/run/airut/proxy.sock` is mounted, starts the
//!   network relay (`relay.rs`) first, and refuses to start PROGRAM if the
//!   relay cannot run: exit 125, so no task ever runs with a half-made
//!   network sandbox; then points the resolver at the relay
//!   (`/etc/resolv.conf` → `nameserver 127.0.0.1`): with `--network none`
//!   the engine copies the host's resolv.conf, whose servers cannot be
//!   reached, so names would not resolve at all;
//!
//! Uses std and libc only. Exit codes of its own: 125 (setup failed),
//! 127 (PROGRAM could not be started).

#![allow(unsafe_code)] // signal masks, waitpid and kill need libc calls.

mod relay;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const PROXY_SOCKET: &str = "/run/airut/proxy.sock";
const CA_CERT: &str = "/run/airut/ca.crt";
/// The resolver configuration pointed at the relay's DNS.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where Debian-style `update-ca-certificates` looks for local CAs.
const LOCAL_CA_COPY: &str = "/usr/local/share/ca-certificates/airut-task-ca.crt";
/// The system bundles of the usual distributions; the CA is appended to
/// each that exists.
const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        fail(125, "usage: airut-init PROGRAM [ARGS...]");
    };
    if program == "--version" {
        println!("airut-init {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let rest: Vec<OsString> = args.collect();

    if Path::new(PROXY_SOCKET).exists()
        && let Err(e) = relay::spawn(Path::new(PROXY_SOCKET))
    {
        fail(
            125,
            &format!(
                "network relay could not start ({e}); refusing to run without the network sandbox"
            ),
        );
    }
    if Path::new(PROXY_SOCKET).exists()
        && let Err(e) = point_resolver_at_relay()
    {
        fail(
            125,
            &format!("cannot write {RESOLV_CONF} ({e}); names would not resolve"),
        );
    }

    let mut cmd = Command::new(&program);
    cmd.args(&rest).env("IS_SANDBOX", "1");
    if Path::new(CA_CERT).exists() {
        match install_ca() {
            Ok(bundle) => {
                cmd.env("NODE_EXTRA_CA_CERTS", CA_CERT);
                if let Some(bundle) = bundle {
                    cmd.env("SSL_CERT_FILE", &bundle)
                        .env("REQUESTS_CA_BUNDLE", &bundle)
                        .env("CURL_CA_BUNDLE", &bundle);
                }
            }
            Err(e) => fail(125, &format!("cannot install the task CA: {e}")),
        }
    }

    let signals = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
    // Block the signals before the child exists, so none is lost between
    // spawn and sigwait; the child gets the default mask back.
    block(&signals);
    // SAFETY: pre_exec runs in the forked child before exec; it only calls
    // sigprocmask, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => fail(
            127,
            &format!("cannot start {}: {e}", Path::new(&program).display()),
        ),
    };
    let child_pid = child.id() as libc::pid_t;
    // The std handle is not used for waiting: PID 1 reaps everything itself.
    std::mem::forget(child);
    let status = supervise(child_pid, &signals);
    std::process::exit(status);
}

/// Waits for signals: forwards TERM/INT to the child, reaps on CHLD, and
/// returns the child's exit status once it has exited.
fn supervise(child: libc::pid_t, signals: &libc::sigset_t) -> i32 {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `signals` is an initialised set; `sig` is a valid out pointer.
        let r = unsafe { libc::sigwait(signals, &mut sig) };
        if r != 0 {
            continue;
        }
        match sig {
            libc::SIGTERM | libc::SIGINT => {
                // SAFETY: plain syscall on a pid we started.
                unsafe { libc::kill(child, sig) };
            }
            libc::SIGCHLD => {
                if let Some(status) = reap(child) {
                    return status;
                }
            }
            _ => {}
        }
    }
}

/// Reaps every exited process; returns the child's status if it was among them.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == child {
            result = Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                1
            });
        }
    }
}

fn signal_set(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn block(set: &libc::sigset_t) {
    // SAFETY: `set` is initialised.
    let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if r != 0 {
        fail(125, "cannot block signals");
    }
}

/// Makes the relay (127.0.0.1:53) the only name server. A dangling
/// symlink (systemd-resolved style) is replaced by a file.
fn point_resolver_at_relay() -> std::io::Result<()> {
    const CONTENT: &[u8] =
        b"# written by airut-init: DNS is answered by the network relay\nnameserver 127.0.0.1\n";
    match std::fs::write(RESOLV_CONF, CONTENT) {
        Ok(()) => Ok(()),
        Err(_) => {
            let _ = std::fs::remove_file(RESOLV_CONF);
            std::fs::write(RESOLV_CONF, CONTENT)
        }
    }
}

/// Copies the CA where `update-ca-certificates` finds it and appends it to
/// every system bundle present. Returns the bundle to point tools at.
fn install_ca() -> std::io::Result<Option<String>> {
    let pem = std::fs::read(CA_CERT)?;
    if let Some(dir) = Path::new(LOCAL_CA_COPY).parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        // Best effort: only matters if something reruns update-ca-certificates.
        let _ = std::fs::write(LOCAL_CA_COPY, &pem);
    }
    let mut used = None;
    for bundle in BUNDLES {
        if Path::new(bundle).exists() {
            let mut f = std::fs::OpenOptions::new().append(true).open(bundle)?;
            f.write_all(b"\n")?;
            f.write_all(&pem)?;
            used.get_or_insert_with(|| (*bundle).to_owned());
        }
    }
    if used.is_none() {
        // No bundle in the image: make one with just the task CA.
        let bundle = BUNDLES[0];
        if let Some(dir) = Path::new(bundle).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(bundle, &pem)?;
        used = Some(bundle.to_owned());
    }
    Ok(used)
}

fn fail(code: i32, msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "airut-init: {msg}");
    std::process::exit(code);
}

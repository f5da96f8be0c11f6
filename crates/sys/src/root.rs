//! Root checks: the lab and the kernel tests need root (network
//! namespaces, TUN devices, nftables).

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For kernel tests: `true` when the test may run (root and
/// `/dev/net/tun`); otherwise prints a loud `SKIPPED: <test> ...` and returns
/// `false`, or panics when `CI=true` (CI must never skip silently).
pub fn require_root(test: &str) -> bool {
    let ok = is_root() && std::path::Path::new("/dev/net/tun").exists();
    require(ok, &format!("{test} needs root and /dev/net/tun"))
}

/// For tests with prerequisites: `ok`, or else a loud `SKIPPED: <why>` on
/// stderr and `false` — and a panic instead when `CI=true`.
pub fn require(ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "SKIPPED: {why} (CI=true: not skipping)"
    );
    use std::io::Write as _;
    // Straight to fd 2: the test harness captures `eprintln!`.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
    false
}

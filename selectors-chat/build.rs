//! One name for each family of platforms, so that the selector's files say `#[cfg(kqueue)]`
//! instead of repeating the list of systems that have kqueue.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(epoll, kqueue)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    match os.as_str() {
        "linux" | "android" => println!("cargo::rustc-cfg=epoll"),
        "macos" | "ios" | "freebsd" | "dragonfly" | "netbsd" | "openbsd" => {
            println!("cargo::rustc-cfg=kqueue")
        }
        _ => {}
    }
}

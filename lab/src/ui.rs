//! What a person sees: colour only on a terminal and never with `NO_COLOR`, progress only on a
//! terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// <https://no-color.org>: any non-empty `NO_COLOR` turns colour off.
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

pub fn paint(text: &str, code: &str) -> String {
    if color_enabled() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

pub fn error(message: impl std::fmt::Display) {
    say(&paint("error:", "1;31"), message);
}

pub fn warning(message: impl std::fmt::Display) {
    say(&paint("warning:", "1;33"), message);
}

/// One line on stderr in one write: `eprintln!` writes it piece by piece, and a line another
/// thread prints on stdout meanwhile (`lab test --jobs`) could land inside it when both go to
/// one file (`2>&1`), where the kernel matrix reads them.
fn say(label: &str, message: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!("{label} {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn paint_ok(text: &str) -> String {
    paint(text, "32")
}

pub fn paint_failed(text: &str) -> String {
    paint(text, "1;31")
}

pub fn bold(text: &str) -> String {
    paint(text, "1")
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (CI logs, pipes, tests).
pub fn progress(prefix: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if color_enabled() {
        "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg}"
    } else {
        "{prefix} [{bar:30}] {pos}/{len} {msg}"
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar.set_prefix(prefix.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

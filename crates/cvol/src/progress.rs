//! Progress bars for long copies; hidden when stderr is not a terminal.

use cvol_provider::CopyProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// An indicatif bar behind the provider's progress interface.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar labelled `label`, not shown until a copy starts.
    pub fn new(label: &str) -> Self {
        let bar = ProgressBar::hidden();
        bar.set_message(label.to_string());
        Self { bar }
    }
}

impl CopyProgress for Bar {
    fn start(&self, total: u64) {
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.bar.set_length(total);
        self.bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A spinner labelled `label` while a call of unknown length runs; hidden for `--json`
/// and when stderr is not a terminal.
pub fn spinner(json: bool, label: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(label.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// Turns `bar` (a spinner) into a byte count bar at `done` of `total`.
pub fn show_bytes(bar: &ProgressBar, done: u64, total: u64) {
    if bar.length() != Some(total) {
        bar.set_length(total);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
    }
    bar.set_position(done.min(total));
}

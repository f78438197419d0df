//! Progress bars for long copies; hidden when stderr is not a terminal, JSON lines with
//! `--json`.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Progress of a copy for scripts (`--json`): a line on stderr at each percent,
/// `{"progress":{"label":…,"done":BYTES,"total":BYTES}}`.
pub struct JsonLines {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    shown_percent: AtomicU64,
}

impl JsonLines {
    fn print(&self) {
        let line = serde_json::json!({"progress": {
            "label": self.label,
            "done": self.done.load(Ordering::Relaxed),
            "total": self.total.load(Ordering::Relaxed),
        }});
        eprintln!("{line}");
    }
}

impl CopyProgress for JsonLines {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.print();
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let percent = done * 100 / self.total.load(Ordering::Relaxed).max(1);
        if self.shown_percent.fetch_max(percent, Ordering::Relaxed) < percent {
            self.print();
        }
    }

    fn finish(&self) {}
}

/// The progress of a copy labelled `label`: JSON lines with `--json`, else a bar.
pub fn copy_progress(json: bool, label: &str) -> Box<dyn CopyProgress> {
    if json {
        Box::new(JsonLines {
            label: label.to_string(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            shown_percent: AtomicU64::new(0),
        })
    } else {
        Box::new(Bar::new(label))
    }
}

//! The examples' progress bar: an indicatif bar on a terminal, plain lines otherwise.
//!
//! Without a terminal (CI, a pipe) indicatif hides the bar and everything printed
//! through it; the examples' log lines still matter there, so they go to stdout.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` units of training, with a message and log lines above it.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar counting `unit` (e.g. "epochs") up to `len`.
    pub fn new(len: usize, unit: &str) -> Progress {
        let bar = ProgressBar::new(len as u64);
        let template = format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{elapsed}}  {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        Progress { bar }
    }

    /// Prints a line above the bar (or to stdout when there is no bar).
    pub fn log(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            println!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    /// Advances by one unit, showing `message` beside the bar.
    pub fn tick(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
        self.bar.inc(1);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

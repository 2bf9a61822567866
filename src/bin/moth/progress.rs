//! Progress display: an indicatif bar on a terminal; elsewhere (CI logs,
//! pipes) one plain line every 30 seconds, so that long runs still show
//! where they are.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Seconds between two plain progress lines.
const PLAIN_LINE_EVERY: f64 = 30.0;

pub struct Progress {
    bar: ProgressBar,
    plain: bool,
    start: Instant,
    last_line: Cell<f64>,
    message: RefCell<String>,
}

/// A progress bar of `total` steps drawn with the indicatif `template`.
pub fn bar(total: u64, template: &str) -> Progress {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Progress::wrap(pb, !std::io::stderr().is_terminal())
}

/// A progress display that shows nothing (but still takes notes).
pub fn hidden() -> Progress {
    Progress::wrap(ProgressBar::hidden(), false)
}

impl Progress {
    fn wrap(bar: ProgressBar, plain: bool) -> Progress {
        Progress {
            bar,
            plain,
            start: Instant::now(),
            last_line: Cell::new(0.0),
            message: RefCell::new(String::new()),
        }
    }

    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    pub fn set_message(&self, msg: String) {
        if self.plain {
            *self.message.borrow_mut() = msg;
        } else {
            self.bar.set_message(msg);
        }
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        if self.plain {
            self.plain_line(pos);
        }
    }

    /// One line on stderr that does not garble the bar.
    pub fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }

    fn plain_line(&self, pos: u64) {
        let t = self.start.elapsed().as_secs_f64();
        if t - self.last_line.get() < PLAIN_LINE_EVERY {
            return;
        }
        self.last_line.set(t);
        let len = self.bar.length().unwrap_or(0);
        let eta = if pos > 0 && len > pos {
            t / pos as f64 * (len - pos) as f64
        } else {
            0.0
        };
        eprintln!(
            "  {pos}/{len} after {t:.0} s, ETA {eta:.0} s {}",
            self.message.borrow()
        );
    }
}

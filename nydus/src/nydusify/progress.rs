//! Progress shown while converting: a bar per layer and an overall line (bytes read, written,
//! ratio), or nothing with `--no-progress`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Byte counters of one layer.
#[derive(Debug, Default)]
pub struct LayerCounters {
    /// Bytes read from the source registry.
    pub read: Arc<AtomicU64>,
    /// Bytes written to the target registry.
    pub written: Arc<AtomicU64>,
}

/// The progress display of one run.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    totals: Arc<(AtomicU64, AtomicU64)>,
}

impl Progress {
    /// A display on stderr, or none.
    pub fn new(enabled: bool) -> Self {
        if !enabled {
            return Progress {
                multi: None,
                overall: None,
                totals: Arc::default(),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new_spinner());
        overall.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        overall.enable_steady_tick(Duration::from_millis(200));
        Progress {
            multi: Some(multi),
            overall: Some(overall),
            totals: Arc::default(),
        }
    }

    /// Starts a layer bar of `total` bytes to read; the returned handle updates it.
    pub fn layer(&self, name: String, total: u64) -> LayerProgress {
        let counters = LayerCounters::default();
        let bar = self.multi.as_ref().map(|m| {
            let b = m.insert_from_back(1, ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(name);
            b
        });
        LayerProgress {
            bar,
            counters,
            parent: self.clone(),
            reported: (0, 0),
        }
    }

    fn add(&self, read: u64, written: u64) {
        let r = self.totals.0.fetch_add(read, Ordering::Relaxed) + read;
        let w = self.totals.1.fetch_add(written, Ordering::Relaxed) + written;
        if let Some(o) = &self.overall {
            let ratio = if r == 0 { 0.0 } else { w as f64 / r as f64 };
            o.set_message(format!(
                "read {}, written {}, ratio {ratio:.2}",
                indicatif::HumanBytes(r),
                indicatif::HumanBytes(w)
            ));
        }
    }

    /// Prints a line above the bars (or to stderr when there are none).
    pub fn println(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish();
        }
    }
}

/// One layer's bar.
pub struct LayerProgress {
    bar: Option<ProgressBar>,
    /// Counters the layer's transfer updates.
    pub counters: LayerCounters,
    parent: Progress,
    reported: (u64, u64),
}

impl LayerProgress {
    /// Refreshes the bar from the counters.
    pub fn tick(&mut self) {
        let r = self.counters.read.load(Ordering::Relaxed);
        let w = self.counters.written.load(Ordering::Relaxed);
        self.parent.add(
            r.saturating_sub(self.reported.0),
            w.saturating_sub(self.reported.1),
        );
        self.reported = (r, w);
        if let Some(b) = &self.bar {
            b.set_position(r);
            b.set_message(format!("→ {}", indicatif::HumanBytes(w)));
        }
    }

    /// Marks the layer done with a message.
    pub fn done(&mut self, msg: String) {
        self.tick();
        if let Some(b) = &self.bar {
            b.finish_with_message(msg);
        }
    }
}

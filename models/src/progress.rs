//! Progress display for every training loop (classification and
//! detection share `fit`, which drives this): on a terminal an `indicatif`
//! bar redrawn in place, otherwise plain lines every `log_every` steps.
//! Warnings go through [`warn`], which prints them above an active bar
//! and redraws it, so a skipped image no longer breaks the bar's line.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// The bar on screen, if any: where [`warn`] prints.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a warning line on stderr, above the progress bar when one is
/// drawn (from any thread, e.g. the loader's workers).
pub fn warn(msg: impl AsRef<str>) {
    let line = format!("warning: {}", msg.as_ref());
    match ACTIVE.lock().ok().as_deref().and_then(Option::as_ref) {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    }
}

/// One epoch's progress: a bar on a terminal, lines otherwise, nothing
/// when quiet.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    len: u64,
    log_every: usize,
    quiet: bool,
}

impl Progress {
    /// Starts an epoch of `len` steps at `pos`, labelled e.g. `epoch 1/3`.
    pub fn epoch(label: String, len: usize, pos: usize, log_every: usize, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let style = ProgressStyle::with_template("{prefix} {pos}/{len} [{bar:20}]  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#>.");
            let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_prefix(label.clone())
                .with_position(pos as u64);
            if let Ok(mut active) = ACTIVE.lock() {
                *active = Some(bar.clone());
            }
            bar
        });
        Progress {
            bar,
            label,
            len: len as u64,
            log_every: log_every.max(1),
            quiet,
        }
    }

    /// Shows the epoch at `pos` steps with `text` (loss, lr, img/s, ETA);
    /// without a terminal a line every `log_every` global steps
    /// (`global_step`) and at the run's last (`last`).
    pub fn update(&self, pos: usize, global_step: usize, last: bool, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos as u64);
                bar.set_message(text.to_string());
            }
            None if last || global_step.is_multiple_of(self.log_every) => {
                eprintln!("{} {pos}/{}  {text}", self.label, self.len);
            }
            None => {}
        }
    }
}

impl Drop for Progress {
    /// Clears the bar; the caller prints the epoch's summary line.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            if let Ok(mut active) = ACTIVE.lock() {
                *active = None;
            }
            bar.finish_and_clear();
        }
    }
}

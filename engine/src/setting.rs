//! A process-wide switch among a few named choices: set by code, else
//! read once from an environment variable, else the first choice. The
//! convolutions' `SLMLP_CUDNN_API` (`cuda::dnn::Api`), `SLMLP_CUDNN_RTC`
//! (`cuda::dnn::Rtc`) and `SLMLP_CONV_1X1` (`ops::conv::Pointwise`) are
//! such switches; every call reads them, so reading is one atomic load
//! once the variable was read.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

pub(crate) struct Switch<T: 'static> {
    var: &'static str,
    /// The choices by name; the first is the default.
    choices: &'static [(&'static str, T)],
    /// 0: not set by code (then `var`); else 1 + the index in `choices`.
    set: AtomicU8,
    env: OnceLock<Result<T, String>>,
}

impl<T: Copy + PartialEq> Switch<T> {
    pub(crate) const fn new(var: &'static str, choices: &'static [(&'static str, T)]) -> Self {
        Switch {
            var,
            choices,
            set: AtomicU8::new(0),
            env: OnceLock::new(),
        }
    }

    /// The choice named `v`; otherwise an error naming the variable and
    /// the choices ("SLMLP_X must be a, b or c, got \"d\"").
    pub(crate) fn parse(&self, v: &str) -> Result<T, String> {
        if let Some((_, c)) = self.choices.iter().find(|(name, _)| *name == v) {
            return Ok(*c);
        }
        let names: Vec<&str> = self.choices.iter().map(|(name, _)| *name).collect();
        let list = match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(format!("{} must be {list}, got {v:?}", self.var))
    }

    /// What code set, else the variable's choice, else the first; an error
    /// for a value of the variable that names no choice.
    pub(crate) fn get(&self) -> Result<T, String> {
        match self.set.load(Ordering::Relaxed) {
            0 => self
                .env
                .get_or_init(|| match std::env::var(self.var) {
                    Ok(v) => self.parse(&v),
                    Err(_) => Ok(self.choices[0].1),
                })
                .clone(),
            i => Ok(self.choices[(i as usize - 1).min(self.choices.len() - 1)].1),
        }
    }

    /// Sets the choice (over the variable's); returns what was set before,
    /// for [`Switch::restore`].
    pub(crate) fn set(&self, choice: T) -> u8 {
        let i = self
            .choices
            .iter()
            .position(|(_, c)| *c == choice)
            .unwrap_or(0);
        self.set.swap(i as u8 + 1, Ordering::Relaxed)
    }

    /// Sets the choice until the guard is dropped, then puts back what
    /// was set before: for a check or a bench row that runs one choice on
    /// purpose.
    pub(crate) fn scoped(&'static self, choice: T) -> Scoped<T> {
        Scoped {
            switch: self,
            before: self.set(choice),
        }
    }
}

impl<T> Switch<T> {
    /// Puts back what [`Switch::set`] returned.
    pub(crate) fn restore(&self, before: u8) {
        self.set.store(before, Ordering::Relaxed);
    }
}

/// What [`Switch::scoped`] returns: restores the switch when dropped.
pub struct Scoped<T: 'static> {
    switch: &'static Switch<T>,
    before: u8,
}

impl<T> Drop for Scoped<T> {
    fn drop(&mut self) {
        self.switch.restore(self.before);
    }
}

#[cfg(test)]
mod tests {
    use super::Switch;

    #[test]
    fn a_switch_parses_its_names_and_restores_what_was_set() {
        static S: Switch<u8> =
            Switch::new("SLMLP_TEST_SWITCH_UNSET", &[("a", 1), ("b", 2), ("c", 3)]);
        assert_eq!(S.parse("b"), Ok(2));
        assert_eq!(
            S.parse("d"),
            Err("SLMLP_TEST_SWITCH_UNSET must be a, b or c, got \"d\"".into())
        );
        assert_eq!(S.get(), Ok(1), "unset: the first choice");
        let before = S.set(3);
        assert_eq!(S.get(), Ok(3));
        S.restore(before);
        assert_eq!(S.get(), Ok(1));
        {
            let _two = S.scoped(2);
            assert_eq!(S.get(), Ok(2));
        }
        assert_eq!(S.get(), Ok(1), "restored when the guard is dropped");
    }
}

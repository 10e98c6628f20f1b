//! `--device`: where a command computes, parsed into a `DeviceArg`, and how
//! each command turns it into an engine `Device`.

use engine::{Device, Error, Result};
use std::fmt;
use std::str::FromStr;

/// The value of `--device`: `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `auto`
/// (the first GPU if one is usable, else the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
    Auto,
}

impl FromStr for DeviceArg {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceArg> {
        let v = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::arg(
                "--device",
                format!("unknown device {s:?}; expected cpu, cuda, cuda:N (N a GPU index) or auto"),
            )
        };
        match v.as_str() {
            "cpu" => Ok(DeviceArg::Cpu),
            "auto" => Ok(DeviceArg::Auto),
            "cuda" => Ok(DeviceArg::Cuda(0)),
            _ => match v.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceArg::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceArg::Cpu => write!(f, "cpu"),
            DeviceArg::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceArg::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceArg {
    /// The device this asks for: `auto` probes for a GPU (and prints a
    /// one-line notice when it falls back to the CPU); `cuda:N` on a machine
    /// without that usable GPU is the probe's error.
    fn resolve(self) -> Result<Device> {
        let (device, notice) = engine::cuda::resolve_device(&self.to_string())?;
        if let Some(n) = notice {
            eprintln!("{n}");
        }
        Ok(device)
    }

    /// The device a command computes on (`auto`: the first usable GPU,
    /// else the CPU with a notice). On a GPU its runtime is opened here, so
    /// a broken setup fails before any data is read.
    pub fn open(self) -> Result<Device> {
        let device = self.resolve()?;
        if let Device::Cuda(i) = device {
            engine::cuda::gpu(i)?;
        }
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceArg;

    #[test]
    fn parses_the_four_forms_and_names_a_bad_value() {
        for (s, d) in [
            ("cpu", DeviceArg::Cpu),
            ("CUDA", DeviceArg::Cuda(0)),
            ("cuda:3", DeviceArg::Cuda(3)),
            (" auto ", DeviceArg::Auto),
        ] {
            assert_eq!(s.parse::<DeviceArg>().unwrap(), d);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceArg>().unwrap_err().to_string();
            assert!(e.contains("--device") && e.contains("cuda:N"), "{e}");
        }
    }
}

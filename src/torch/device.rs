//! Choosing where tensors live: CPU by default, CUDA when the libtorch in use
//! has it and a GPU is present.
//!
//! Our binaries link only `libtorch_cpu.so` (the linker drops the unused CUDA
//! library), so CUDA stays invisible until `libtorch_cuda.so` is loaded into
//! the process. [`ensure_cuda_loaded`] does that once, from the same folder as
//! the `libtorch_cpu.so` this process actually uses.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A device request as a user writes it: `cpu`, `cuda`, `cuda:N` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N; an error when it is not available.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "unknown device '{s}' (expected cpu, cuda, cuda:N or auto)"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Resolves the choice to a tch device, loading CUDA support if needed.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Auto => Ok(if cuda_device_count() > 0 {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            }),
            DeviceChoice::Cuda(n) => {
                let count = cuda_device_count();
                if n < count {
                    Ok(tch::Device::Cuda(n))
                } else if count == 0 {
                    Err(Error::Device(format!(
                        "cuda:{n} requested but CUDA is not available ({})",
                        cuda_status()
                    )))
                } else {
                    Err(Error::Device(format!(
                        "cuda:{n} requested but only {count} CUDA device(s) exist"
                    )))
                }
            }
        }
    }
}

static CUDA_LOAD: OnceLock<std::result::Result<String, String>> = OnceLock::new();

/// Loads `libtorch_cuda.so` next to the `libtorch_cpu.so` in use, once per
/// process. Returns the loaded path, or why it could not be loaded (a CPU-only
/// libtorch, or a CUDA build without a driver).
pub fn ensure_cuda_loaded() -> std::result::Result<String, String> {
    CUDA_LOAD.get_or_init(load_cuda_library).clone()
}

fn cuda_status() -> String {
    match ensure_cuda_loaded() {
        Ok(p) => format!("{p} loaded, but no GPU is visible"),
        Err(e) => e,
    }
}

/// Number of CUDA devices usable by this process (0 on a CPU-only machine).
pub fn cuda_device_count() -> usize {
    if ensure_cuda_loaded().is_err() {
        return 0;
    }
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// The folder of the `libtorch_cpu.so` mapped into this process.
pub(crate) fn libtorch_lib_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
}

fn load_cuda_library() -> std::result::Result<String, String> {
    let dir = libtorch_lib_dir().ok_or("libtorch_cpu.so is not mapped in this process")?;
    let path = dir.join("libtorch_cuda.so");
    if !path.exists() {
        return Err(format!(
            "{} does not exist (CPU-only libtorch)",
            path.display()
        ));
    }
    crate::torch::sys::dlopen_global(&path).map_err(|msg| {
        log::debug!("could not load {}: {msg}", path.display());
        format!("could not load {}: {msg}", path.display())
    })?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves_and_missing_cuda_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), tch::Device::Cpu);
        let n = cuda_device_count();
        let e = DeviceChoice::Cuda(n).resolve().unwrap_err();
        assert!(e.to_string().contains("cuda:"), "{e}");
    }
}

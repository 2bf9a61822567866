//! `moth_config`: a session configuration built from defaults plus typed
//! setters or JSON, so that new options never change the ABI. The JSON
//! form is exactly `SessionConfig`'s serde form (see `moth_config_to_json`).

use std::ffi::c_char;

use serde_json::{Map, Value};

use super::boundary::{c_str, init_out, out};
use super::handle::{handle, handle_mut, into_handle, release, Handle};
use super::status::{c_message, moth_status, write_c_string, FfiError, FfiResult};
use crate::algo::bounds::BoundsMode;
use crate::session::{Method, Preset, SessionConfig};
use crate::Error;

/// A session configuration (opaque). Create with `moth_config_new`, free
/// with `moth_config_free`. Not thread-safe: do not use one config from
/// two threads at once. A session copies it, so it may be freed or changed
/// once `moth_session_new` returned.
pub struct moth_config {
    pub(crate) config: SessionConfig,
}

impl Handle for moth_config {
    const TAG: u64 = u64::from_be_bytes(*b"mothCONF");
    const WHAT: &'static str = "config";
}

fn config_error(message: String) -> FfiError {
    FfiError::new(moth_status::InvalidConfig, message)
}

impl moth_config {
    /// Applies a JSON object patch; the config is unchanged on error.
    fn apply(&mut self, patch: Value) -> FfiResult<()> {
        self.config = self.config.with_patch(patch)?;
        Ok(())
    }

    /// Sets one dotted key (`"warmup.budget.steps"`) to `value`.
    fn set_key(&mut self, key: &str, value: Value) -> FfiResult<()> {
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(config_error(format!("invalid key '{key}'")));
        }
        // Refuse keys that do not exist yet, so that a typo never turns a
        // scalar setter into a whole-object replacement.
        let current = serde_json::to_value(&self.config)
            .map_err(|e| Error::encode("the configuration", e))?;
        let mut node = &current;
        for part in key.split('.') {
            node = node
                .get(part)
                .ok_or_else(|| config_error(format!("unknown configuration key '{key}'")))?;
        }
        if node.is_object() {
            return Err(config_error(format!(
                "'{key}' is a group of settings; set its fields one by one or use moth_config_set_json"
            )));
        }
        let mut patch = value;
        for part in key.rsplit('.') {
            let mut m = Map::new();
            m.insert(part.to_string(), patch);
            patch = Value::Object(m);
        }
        self.apply(patch)
            .map_err(|e| FfiError::new(e.status, format!("{key}: {}", e.message)))
    }
}

/// Creates a configuration holding moth's default preset (see
/// `moth_config_set_preset` for the authors' reference settings).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_new(out_config: *mut *mut moth_config) -> moth_status {
    ffi_boundary!("moth_config_new", {
        init_out(out_config);
        let o = out(out_config, "out_config")?;
        *o = into_handle(moth_config {
            config: SessionConfig::default(),
        });
        Ok(())
    })
}

/// Frees a configuration. `moth_config_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_config_free(config: *mut moth_config) {
    ffi_boundary!("moth_config_free", void, {
        // The settings are plain values: dropping them frees everything.
        let _ = release(config, "config")?;
        Ok(())
    })
}

/// Merges a JSON object into the configuration: keys present replace the
/// current values, nested objects are merged key by key, absent keys keep
/// their values. Unknown keys, wrong types and out-of-range values are
/// refused with `MOTH_STATUS_INVALID_CONFIG` and leave the configuration
/// unchanged. Example: `{"seed": 3, "warmup": {"budget": {"steps": 50}}}`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_set_json(
    config: *mut moth_config,
    json: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_config_set_json", {
        let cfg = handle_mut(config, "config")?;
        let text = c_str(json, "json")?;
        let patch: Value =
            serde_json::from_str(text).map_err(|e| config_error(format!("invalid JSON: {e}")))?;
        cfg.apply(patch)
    })
}

/// Sets an integer setting by its dotted key, e.g. `"seed"`,
/// `"max_steps"`, `"warmup.budget.steps"`. Refuses unknown keys, groups and
/// values of the wrong type (`MOTH_STATUS_INVALID_CONFIG`).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_set_int(
    config: *mut moth_config,
    key: *const c_char,
    value: i64,
) -> moth_status {
    ffi_boundary!("moth_config_set_int", {
        let cfg = handle_mut(config, "config")?;
        let key = c_str(key, "key")?;
        cfg.set_key(key, Value::from(value))
    })
}

/// Sets an unsigned integer setting by its dotted key (for the full range
/// of `"seed"`).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_set_uint(
    config: *mut moth_config,
    key: *const c_char,
    value: u64,
) -> moth_status {
    ffi_boundary!("moth_config_set_uint", {
        let cfg = handle_mut(config, "config")?;
        let key = c_str(key, "key")?;
        cfg.set_key(key, Value::from(value))
    })
}

/// Sets a floating-point setting by its dotted key, e.g. `"portion"`,
/// `"inversion.lr"`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_set_double(
    config: *mut moth_config,
    key: *const c_char,
    value: f64,
) -> moth_status {
    ffi_boundary!("moth_config_set_double", {
        let cfg = handle_mut(config, "config")?;
        let key = c_str(key, "key")?;
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| config_error(format!("{key}: {value} is not a finite number")))?;
        cfg.set_key(key, v)
    })
}

/// Replaces every setting with those of a preset: `"default"` (moth's
/// default) or `"reference"` (the authors' published settings, exactly).
/// `MOTH_STATUS_INVALID_CONFIG` for another name, the configuration
/// unchanged.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_set_preset(
    config: *mut moth_config,
    preset: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_config_set_preset", {
        let cfg = handle_mut(config, "config")?;
        let preset: Preset = c_str(preset, "preset")?.parse()?;
        cfg.config = preset.session_config();
        Ok(())
    })
}

/// Sets a string setting by its dotted key: `"method"` (`"moth"`,
/// `"universal"`, `"pairwise"`, `"asymmetric"`, as the CLI's `--method`
/// spells them) or `"bounds.mode"` (`"fixed"`, `"growing"`). Names are
/// case-insensitive (`moth_config_to_json` prints them capitalised, `"Moth"`).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_set_string(
    config: *mut moth_config,
    key: *const c_char,
    value: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_config_set_string", {
        let cfg = handle_mut(config, "config")?;
        let key = c_str(key, "key")?;
        let value = c_str(value, "value")?;
        cfg.set_key(key, named_value(key, value)?)
    })
}

/// The JSON form of a string setting: the names of the enumerated settings
/// are matched case-insensitively and written in their serde spelling.
fn named_value(key: &str, value: &str) -> FfiResult<Value> {
    fn spelled<T: serde::Serialize>(v: T) -> FfiResult<Value> {
        Ok(serde_json::to_value(v).map_err(|e| Error::encode("a setting", e))?)
    }
    match key {
        "method" => spelled(value.parse::<Method>()?),
        "bounds.mode" => match value.to_ascii_lowercase().as_str() {
            "fixed" => spelled(BoundsMode::Fixed),
            "growing" => spelled(BoundsMode::Growing),
            _ => Err(config_error(format!(
                "bounds.mode: unknown mode '{value}' (expected fixed or growing)"
            ))),
        },
        _ => Ok(Value::from(value)),
    }
}

/// Writes the complete configuration (every setting, defaults included) as
/// a JSON object into `buf`. `*needed` receives the size required including
/// the NUL in every case; pass `buf = NULL, len = 0` to query it. Returns
/// `MOTH_STATUS_BUFFER_TOO_SMALL` when `len < *needed` (nothing written).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_config_to_json(
    config: *const moth_config,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_config_to_json", {
        init_out(needed);
        let cfg = handle(config, "config")?;
        write_json(&cfg.config, buf, len, needed)
    })
}

/// Writes a configuration as JSON into a caller buffer.
pub(crate) fn write_json(
    config: &SessionConfig,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> FfiResult<()> {
    let text = serde_json::to_string(config).map_err(|e| Error::encode("the configuration", e))?;
    let c = c_message(&text);
    // SAFETY: forwarded C contract of the buffer arguments.
    unsafe { write_c_string(c.as_bytes_with_nul(), buf, len, needed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration's JSON as a value.
    fn json_of(cfg: *const moth_config) -> Value {
        let mut buf = vec![0 as c_char; 8192];
        let mut needed = 0;
        // SAFETY: a live config and a buffer of the stated length.
        let st = unsafe { moth_config_to_json(cfg, buf.as_mut_ptr(), buf.len(), &mut needed) };
        assert_eq!(st, moth_status::Ok);
        // SAFETY: moth wrote a NUL-terminated string into `buf`.
        let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        serde_json::from_str(text.to_str().unwrap()).unwrap()
    }

    #[test]
    fn method_and_bounds_names_are_accepted_as_the_cli_spells_them() {
        let mut cfg = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the strings are NUL-terminated.
        unsafe {
            assert_eq!(moth_config_new(&mut cfg), moth_status::Ok);
            for (key, value, json) in [
                (c"method", c"pairwise", "Pairwise"),
                (c"method", c"moth", "Moth"),
                (c"method", c"Universal", "Universal"),
                (c"bounds.mode", c"growing", "Growing"),
            ] {
                let st = moth_config_set_string(cfg, key.as_ptr(), value.as_ptr());
                assert_eq!(st, moth_status::Ok, "{key:?} = {value:?}");
                let v = json_of(cfg);
                let got = match key.to_str().unwrap() {
                    "method" => &v["method"],
                    _ => &v["bounds"]["mode"],
                };
                assert_eq!(got, json, "{key:?} = {value:?}");
            }
            let st = moth_config_set_string(cfg, c"method".as_ptr(), c"mothy".as_ptr());
            assert_eq!(st, moth_status::InvalidConfig);
            assert_eq!(
                json_of(cfg)["method"],
                "Universal",
                "unchanged after a refusal"
            );
            moth_config_free(cfg);
        }
    }
}

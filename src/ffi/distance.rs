//! `moth_distance_*`: class distances over C. A protocol object
//! (`moth_distance_config`, the CLI's `--protocol` presets and overrides), one
//! measurement call that runs the same core function as `moth distance`
//! (`crate::algo::distance::measure_pairs`), and a result object holding the
//! matrix and the smallest trigger of every measured direction.

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;

use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::boundary::{c_str, init_out, out};
use super::classifier::moth_classifier;
use super::handle::{handle, handle_mut, into_handle, release, Handle};
use super::status::{c_message, moth_status, write_c_string, FfiError, FfiResult};
use super::tensor::moth_tensor;
use crate::algo::distance::{measure_pairs, DistanceMatrix, FoundTrigger, Samples};
use crate::config::DistanceConfig;
use crate::torch::model::Classifier;
use crate::Error;

/// A distance protocol (opaque): samples per class, inversion steps, seeds,
/// initial cost, ASR bound and the inversion optimiser. Create with
/// `moth_distance_config_new`, free with `moth_distance_config_free`. Not
/// thread-safe (one thread at a time); a measurement copies it.
pub struct moth_distance_config {
    config: DistanceConfig,
}

impl Handle for moth_distance_config {
    const TAG: u64 = u64::from_be_bytes(*b"mothDCFG");
    const WHAT: &'static str = "distance config";
}

impl moth_distance_config {
    /// Applies a change; the protocol is unchanged when the result is invalid.
    fn change(&mut self, f: impl FnOnce(&mut DistanceConfig)) -> FfiResult<()> {
        let mut next = self.config.clone();
        f(&mut next);
        next.validate()?;
        self.config = next;
        Ok(())
    }
}

/// The result of a measurement (opaque): the directed distance matrix, the
/// protocol and the smallest trigger of every measured direction that
/// reached the ASR bound. Free with `moth_distance_result_free`. Read-only,
/// so it may be read from several threads at once.
pub struct moth_distance_result {
    matrix: DistanceMatrix,
    triggers: Vec<FoundTrigger>,
    input_shape: [i64; 3],
}

impl Handle for moth_distance_result {
    const TAG: u64 = u64::from_be_bytes(*b"mothDRES");
    const WHAT: &'static str = "distance result";
}

/// Progress callback of `moth_distance_measure`: `done` of `total` directed
/// pairs are measured (counted over all seeds; called after each source
/// class of each seed). Return 0 to go on, any other value to stop: the
/// measurement then returns `MOTH_STATUS_CANCELLED` and no result. Called
/// on the measuring thread with the classifier locked: call no moth
/// function on that classifier from inside it (`MOTH_STATUS_BUSY`).
pub type moth_distance_progress_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, done: usize, total: usize) -> i32>;

/// Creates a protocol from a preset: `"quick"` (32 samples per class, 200
/// steps, seed 0: the CLI's CPU default), `"confirm"` (64 samples, 600
/// steps, seeds 0 and 1) or `"paper"` (100 samples, 1000 steps, seeds 0, 1,
/// 2: the CUDA default). All use initial cost 1e-3 and ASR bound 0.9, as
/// `moth distance --protocol NAME` does. `MOTH_STATUS_INVALID_CONFIG` for
/// another name.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_new(
    preset: *const c_char,
    out_config: *mut *mut moth_distance_config,
) -> moth_status {
    ffi_boundary!("moth_distance_config_new", {
        init_out(out_config);
        let o = out(out_config, "out_config")?;
        let config = DistanceConfig::preset(c_str(preset, "preset")?)?;
        *o = into_handle(moth_distance_config { config });
        Ok(())
    })
}

/// Frees a protocol. `moth_distance_config_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_distance_config_free(config: *mut moth_distance_config) {
    ffi_boundary!("moth_distance_config_free", void, {
        drop(release(config, "config")?);
        Ok(())
    })
}

/// Sets the samples inverted per source class (`moth distance --samples`),
/// at least 1.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_set_samples(
    config: *mut moth_distance_config,
    samples_per_class: usize,
) -> moth_status {
    ffi_boundary!("moth_distance_config_set_samples", {
        handle_mut(config, "config")?.change(|c| c.samples_per_class = samples_per_class)
    })
}

/// Sets the inversion steps per direction (`moth distance --steps`), at
/// least 1.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_set_steps(
    config: *mut moth_distance_config,
    steps: usize,
) -> moth_status {
    ffi_boundary!("moth_distance_config_set_steps", {
        handle_mut(config, "config")?.change(|c| c.budget.steps = steps)
    })
}

/// Sets the seeds (`moth distance --seeds`): `seeds[0..count]`, at least
/// one. Each seed is a full measurement; a distance is the smallest over
/// the seeds that reached the bound.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_set_seeds(
    config: *mut moth_distance_config,
    seeds: *const u64,
    count: usize,
) -> moth_status {
    ffi_boundary!("moth_distance_config_set_seeds", {
        let cfg = handle_mut(config, "config")?;
        if count == 0 {
            return Err(FfiError::new(
                moth_status::InvalidConfig,
                "at least one seed is needed",
            ));
        }
        if seeds.is_null() {
            return Err(FfiError::null("seeds"));
        }
        // SAFETY: non-NULL; the caller promises `count` readable values.
        let v = unsafe { std::slice::from_raw_parts(seeds, count) }.to_vec();
        cfg.change(|c| c.seeds = v)
    })
}

/// Sets the initial weight of the mask-size term of every inversion
/// (`>= 0`; the presets use 1e-3).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_set_init_cost(
    config: *mut moth_distance_config,
    init_cost: f64,
) -> moth_status {
    ffi_boundary!("moth_distance_config_set_init_cost", {
        handle_mut(config, "config")?.change(|c| c.budget.init_cost = init_cost)
    })
}

/// Sets the attack success rate a trigger must reach to count (in
/// `[0, 1]`; the presets use 0.9).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_set_asr_bound(
    config: *mut moth_distance_config,
    asr_bound: f64,
) -> moth_status {
    ffi_boundary!("moth_distance_config_set_asr_bound", {
        handle_mut(config, "config")?.change(|c| c.budget.asr_bound = asr_bound)
    })
}

/// Merges a JSON object into the protocol, in the form
/// `moth_distance_config_to_json` prints (for example
/// `{"inversion": {"lr": 0.05}}`); unknown keys, wrong types and
/// out-of-range values give `MOTH_STATUS_INVALID_CONFIG` and leave it
/// unchanged.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_set_json(
    config: *mut moth_distance_config,
    json: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_distance_config_set_json", {
        let cfg = handle_mut(config, "config")?;
        let patch: Value = serde_json::from_str(c_str(json, "json")?)
            .map_err(|e| FfiError::new(moth_status::InvalidConfig, format!("invalid JSON: {e}")))?;
        cfg.config = cfg.config.with_patch(patch)?;
        Ok(())
    })
}

/// Writes the whole protocol as a JSON object into `buf` (buffer rules as
/// `moth_config_to_json`: `*needed` is the size with the NUL; pass
/// `buf = NULL, len = 0` to ask).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_config_to_json(
    config: *const moth_distance_config,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_distance_config_to_json", {
        init_out(needed);
        let cfg = handle(config, "config")?;
        let text = serde_json::to_string(&cfg.config)
            .map_err(|e| Error::encode("the distance protocol", e))?;
        // SAFETY: forwarded C contract of the buffer arguments.
        unsafe { write_c_string(c_message(&text).as_bytes_with_nul(), buf, len, needed) }
    })
}

/// The caller's samples as the core function takes them: CPU float images
/// in `[0, 1]` and labels below `num_classes`.
fn checked_samples(
    images: &Tensor,
    labels: &Tensor,
    num_classes: usize,
) -> FfiResult<(Tensor, Vec<i64>)> {
    let shape = images.size();
    if shape.len() != 4 || shape[0] == 0 || shape[1..].iter().any(|&d| d <= 0) {
        return Err(FfiError::new(
            moth_status::WrongShape,
            format!("images must be [n, C, H, W] with n > 0, got {shape:?}"),
        ));
    }
    if !matches!(images.kind(), Kind::Float | Kind::Double) {
        return Err(FfiError::new(
            moth_status::WrongDtype,
            "images must hold floating-point pixels (MOTH_DTYPE_FLOAT32 or FLOAT64)",
        ));
    }
    let images = images.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
    let (lo, hi) = (
        images.f_min()?.double_value(&[]),
        images.f_max()?.double_value(&[]),
    );
    if !(lo >= 0.0 && hi <= 1.0) {
        return Err(FfiError::new(
            moth_status::InvalidValue,
            format!("pixels must be in [0, 1] (no NaN); found values in [{lo}, {hi}]"),
        ));
    }
    if labels.size() != [shape[0]] {
        return Err(FfiError::new(
            moth_status::WrongShape,
            format!(
                "labels must be [{}] (one per image), got {:?}",
                shape[0],
                labels.size()
            ),
        ));
    }
    if !matches!(labels.kind(), Kind::Int64 | Kind::Int | Kind::Uint8) {
        return Err(FfiError::new(
            moth_status::WrongDtype,
            "labels must be integers (MOTH_DTYPE_INT64, INT32 or UINT8)",
        ));
    }
    let labels = Vec::<i64>::try_from(&labels.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?)?;
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= num_classes) {
        return Err(FfiError::new(
            moth_status::LabelOutOfRange,
            format!("label {bad} out of range for {num_classes} classes"),
        ));
    }
    Ok((images, labels))
}

/// The `(source, target)` pairs of `pairs[0..2*count]`, or all for NULL.
fn read_pairs(pairs: *const usize, count: usize) -> FfiResult<Option<Vec<(usize, usize)>>> {
    if pairs.is_null() {
        return if count == 0 {
            Ok(None)
        } else {
            Err(FfiError::null("pairs"))
        };
    }
    let len = count
        .checked_mul(2)
        .ok_or_else(|| FfiError::invalid("pair count overflows"))?;
    // SAFETY: non-NULL; the caller promises `2 * count` readable values.
    let flat = unsafe { std::slice::from_raw_parts(pairs, len) };
    Ok(Some(flat.chunks(2).map(|p| (p[0], p[1])).collect()))
}

/// Measures class distances of `classifier` (TorchScript, tensor callback
/// or host-buffer callbacks) with the protocol `config`, exactly as
/// `moth distance` does (the same core function; the same protocol, seeds
/// and samples in the same order give the same matrix, bit for bit on the
/// CPU).
///
/// Samples: `images` `[n, C, H, W]` floating-point pixels in `[0, 1]`
/// (NCHW, row-major; a Julia `Array{Float32,4}` of size `(W, H, C, n)` is
/// this memory), `labels` `[n]` integers in `[0, num_classes)`. For each
/// seed and source class, `samples_per_class` of that class's images are
/// drawn (a seeded shuffle of their positions in `images`). Both tensors
/// stay the caller's. The classifier must return `[k, num_classes]` logits
/// (`MOTH_STATUS_WRONG_SHAPE` otherwise).
///
/// Pairs: `pairs` holds `num_pairs` directed pairs as `(source, target)`
/// index couples (`2 * num_pairs` values); NULL with `num_pairs == 0`
/// measures the full matrix. Every class with a chosen pair as source needs
/// at least one sample. A pair's value depends on which other targets of
/// the same source are chosen (they are inverted together), never on other
/// sources.
///
/// `progress` (may be NULL) is called with `user_data` after each source
/// class of each seed; a non-zero return stops with
/// `MOTH_STATUS_CANCELLED`. On success `*out_result` receives a new result
/// (free it with `moth_distance_result_free`). The classifier is put in
/// evaluation mode and stays locked for the whole measurement.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_measure(
    classifier: *mut moth_classifier,
    config: *const moth_distance_config,
    images: *const moth_tensor,
    labels: *const moth_tensor,
    num_classes: usize,
    pairs: *const usize,
    num_pairs: usize,
    progress: moth_distance_progress_fn,
    user_data: *mut c_void,
    out_result: *mut *mut moth_distance_result,
) -> moth_status {
    ffi_boundary!("moth_distance_measure", {
        init_out(out_result);
        let o = out(out_result, "out_result")?;
        let clf = handle(classifier, "classifier")?;
        let cfg = handle(config, "config")?.config.clone();
        let images = &handle(images, "images")?.tensor;
        let labels = &handle(labels, "labels")?.tensor;
        if num_classes < 2 {
            return Err(FfiError::invalid(format!(
                "num_classes must be at least 2, got {num_classes}"
            )));
        }
        let (images, labels) = checked_samples(images, labels, num_classes)?;
        let pairs = read_pairs(pairs, num_pairs)?;
        let mut model = clf.body.lock()?;
        check_class_count(&*model, &images, num_classes)?;
        let classes: Vec<String> = (0..num_classes).map(|i| i.to_string()).collect();
        let samples = Samples {
            images: &images,
            labels,
            classes: &classes,
        };
        // The inversions need autograd whatever the host thread's mode; the
        // boundary gives the host its mode back.
        let _grad = crate::torch::grad::GradGuard::set(true);
        let (matrix, triggers) =
            measure_pairs(&mut *model, samples, &cfg, pairs.as_deref(), &mut |p| {
                match progress {
                    // SAFETY: the caller registered `f` for this call.
                    Some(f) if unsafe { f(user_data, p.done, p.total) } != 0 => {
                        ControlFlow::Break(())
                    }
                    _ => ControlFlow::Continue(()),
                }
            })?;
        let s = images.size();
        *o = into_handle(moth_distance_result {
            matrix,
            triggers,
            input_shape: [s[1], s[2], s[3]],
        });
        Ok(())
    })
}

/// Refuses a classifier whose logits are not `[k, num_classes]`.
fn check_class_count(model: &dyn Classifier, images: &Tensor, num_classes: usize) -> FfiResult<()> {
    let probe = images.f_narrow(0, 0, 1)?.f_to_device(model.device())?;
    let logits = crate::torch::grad::no_grad(|| model.forward(&probe))?;
    if logits.size() != [1, num_classes as i64] {
        return Err(FfiError::new(
            moth_status::WrongShape,
            format!(
                "the classifier returned logits of shape {:?} for 1 input; with {num_classes} \
                 classes they must be [1, {num_classes}]",
                logits.size()
            ),
        ));
    }
    Ok(())
}

/// Frees a result. `moth_distance_result_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_distance_result_free(result: *mut moth_distance_result) {
    ffi_boundary!("moth_distance_result_free", void, {
        drop(release(result, "result")?);
        Ok(())
    })
}

/// Writes the number of classes `N` of the matrix.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_result_num_classes(
    result: *const moth_distance_result,
    out_num_classes: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_distance_result_num_classes", {
        init_out(out_num_classes);
        let o = out(out_num_classes, "out_num_classes")?;
        *o = handle(result, "result")?.matrix.len();
        Ok(())
    })
}

/// Copies the `N x N` matrix, row-major, into `out_values` of `len` doubles
/// (at least `N * N`, else `MOTH_STATUS_BUFFER_TOO_SMALL`):
/// `out_values[a * N + b]` is the distance `a -> b`, the size
/// `C * sum(mask)` of the smallest trigger that flips class `a` to `b` at
/// the ASR bound. 0 on the diagonal, for pairs not measured, and for pairs
/// whose inversion never reached the bound (`moth_distance_result_trigger`
/// tells these apart).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_result_matrix(
    result: *const moth_distance_result,
    out_values: *mut f64,
    len: usize,
) -> moth_status {
    ffi_boundary!("moth_distance_result_matrix", {
        let r = handle(result, "result")?;
        let n = r.matrix.len();
        if len < n * n {
            return Err(FfiError::new(
                moth_status::BufferTooSmall,
                format!("{len} doubles is too small for a {n}x{n} matrix"),
            ));
        }
        if out_values.is_null() {
            return Err(FfiError::null("out_values"));
        }
        for (i, row) in r.matrix.values.iter().enumerate() {
            // SAFETY: `out_values` holds `len >= n*n` doubles (C contract).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_values.add(i * n), n) };
        }
        Ok(())
    })
}

/// Writes the `[C, H, W]` input shape the triggers are for.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_result_input_shape(
    result: *const moth_distance_result,
    out_c: *mut i64,
    out_h: *mut i64,
    out_w: *mut i64,
) -> moth_status {
    ffi_boundary!("moth_distance_result_input_shape", {
        init_out(out_c);
        init_out(out_h);
        init_out(out_w);
        let [c, h, w] = handle(result, "result")?.input_shape;
        *out(out_c, "out_c")? = c;
        *out(out_h, "out_h")? = h;
        *out(out_w, "out_w")? = w;
        Ok(())
    })
}

/// Copies the smallest trigger found for `source -> target`: `*out_found`
/// is false (buffers untouched) when the pair was not measured or never
/// reached the ASR bound. Otherwise `mask` receives `H * W` floats (the
/// `[1, H, W]` mask in `[0, 1]`, row-major) and `pattern` `C * H * W` floats
/// (the `[C, H, W]` pattern in `[0, 1]`, NCHW order); a stamped image is
/// `(1 - mask) * x + mask * pattern`. `mask_len` and `pattern_len` count
/// floats (`MOTH_STATUS_BUFFER_TOO_SMALL` when short); either buffer may be
/// NULL, with length 0, to skip it. `MOTH_STATUS_INVALID_ARGUMENT` for a
/// class index `>= N`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_result_trigger(
    result: *const moth_distance_result,
    source: usize,
    target: usize,
    mask: *mut f32,
    mask_len: usize,
    pattern: *mut f32,
    pattern_len: usize,
    out_found: *mut bool,
) -> moth_status {
    ffi_boundary!("moth_distance_result_trigger", {
        init_out(out_found);
        let found = out(out_found, "out_found")?;
        let r = handle(result, "result")?;
        let n = r.matrix.len();
        if source >= n || target >= n {
            return Err(FfiError::invalid(format!(
                "pair ({source}, {target}) is outside the {n} classes"
            )));
        }
        let Some(t) = r
            .triggers
            .iter()
            .find(|t| t.source == source && t.target == target)
        else {
            return Ok(());
        };
        let [c, h, w] = r.input_shape;
        copy_floats(&t.trigger.mask, (h * w) as usize, mask, mask_len, "mask")?;
        copy_floats(
            &t.trigger.pattern,
            (c * h * w) as usize,
            pattern,
            pattern_len,
            "pattern",
        )?;
        *found = true;
        Ok(())
    })
}

/// Copies the `count` floats of `t` into the caller's buffer (skipped for
/// a NULL buffer of length 0).
fn copy_floats(t: &Tensor, count: usize, dst: *mut f32, len: usize, name: &str) -> FfiResult<()> {
    if dst.is_null() {
        return if len == 0 {
            Ok(())
        } else {
            Err(FfiError::null(name))
        };
    }
    if len < count {
        return Err(FfiError::new(
            moth_status::BufferTooSmall,
            format!("{name}: {len} floats is too small, {count} needed"),
        ));
    }
    let v = Vec::<f32>::try_from(&t.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?;
    // SAFETY: `dst` holds `len >= count == v.len()` floats (C contract).
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), dst, v.len().min(count)) };
    Ok(())
}

/// Writes the result as JSON into `buf` (buffer rules as
/// `moth_config_to_json`), in the form of the `distances.json` that
/// `moth distance` writes: `classes`, `values` (rows = source), `failed`
/// (measured pairs that never reached the bound), `protocol` (its one-line
/// description) and `seconds`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_distance_result_to_json(
    result: *const moth_distance_result,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_distance_result_to_json", {
        init_out(needed);
        let r = handle(result, "result")?;
        let text = serde_json::to_string(&r.matrix)
            .map_err(|e| Error::encode("the distance matrix", e))?;
        // SAFETY: forwarded C contract of the buffer arguments.
        unsafe { write_c_string(c_message(&text).as_bytes_with_nul(), buf, len, needed) }
    })
}

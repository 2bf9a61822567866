//! The boundary of the C ABI: every exported function body is one
//! `ffi_boundary!` invocation (checked by parsing src/ffi with syn) and is
//! declared in the header; NULL pointers, invalid UTF-8, wrong shapes,
//! dtypes, labels and values get their own statuses and messages; absurd
//! arguments are refused rather than crashing; and no call leaves the
//! host's thread with another grad mode than it had. (Panics and poisoning
//! are covered by the unit tests of src/ffi/boundary.rs and session.rs:
//! no exported function panics on purpose.)

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

use tch::{Kind, Tensor};

mod common;
mod native;
use common::ffi::*;
use native::*;

/// An `extern "C" fn` defined in src/ffi.
struct ExternFn {
    file: String,
    name: String,
    /// Marked `#[no_mangle]`.
    exported: bool,
    /// Why its body is not exactly one `ffi_boundary!("<name>", ...)`
    /// invocation, if it is not.
    problem: Option<String>,
}

/// Why `body` is not exactly one `ffi_boundary!("<name>", ...)` invocation,
/// or None when it is.
fn boundary_problem(name: &str, body: &syn::Block) -> Option<String> {
    let [stmt] = body.stmts.as_slice() else {
        return Some(format!(
            "{} statements instead of one ffi_boundary! invocation",
            body.stmts.len()
        ));
    };
    let mac = match stmt {
        syn::Stmt::Macro(m) if m.semi_token.is_none() => &m.mac,
        syn::Stmt::Expr(syn::Expr::Macro(m), None) => &m.mac,
        _ => return Some("its body is not one ffi_boundary! invocation".into()),
    };
    if !mac.path.is_ident("ffi_boundary") {
        let path = mac.path.segments.iter().map(|s| s.ident.to_string());
        return Some(format!(
            "its body invokes {}! instead of ffi_boundary!",
            path.collect::<Vec<_>>().join("::")
        ));
    }
    // The first argument is the function's own name, as a string literal.
    let first = mac.parse_body_with(|input: syn::parse::ParseStream| {
        let lit: syn::LitStr = input.parse()?;
        let _: syn::Token![,] = input.parse()?;
        input.step(|cursor| {
            let mut rest = *cursor;
            while let Some((_, next)) = rest.token_tree() {
                rest = next;
            }
            Ok(((), rest))
        })?;
        Ok(lit.value())
    });
    match first {
        Ok(n) if n == name => None,
        Ok(n) => Some(format!("its ffi_boundary! is named \"{n}\"")),
        Err(e) => Some(format!("its ffi_boundary! does not start with a name: {e}")),
    }
}

/// Collects the `extern "C"` functions of one file (methods and functions
/// nested in modules included) and counts its `#[no_mangle]` attributes.
struct Finder<'a> {
    file: &'a str,
    found: Vec<ExternFn>,
    no_mangle: usize,
}

impl Finder<'_> {
    fn check(&mut self, attrs: &[syn::Attribute], sig: &syn::Signature, body: &syn::Block) {
        let is_c = sig
            .abi
            .as_ref()
            .is_some_and(|abi| abi.name.as_ref().map_or(true, |n| n.value() == "C"));
        if !is_c {
            return;
        }
        let name = sig.ident.to_string();
        self.found.push(ExternFn {
            file: self.file.to_string(),
            exported: attrs.iter().any(|a| a.path().is_ident("no_mangle")),
            problem: boundary_problem(&name, body),
            name,
        });
    }
}

impl<'ast> syn::visit::Visit<'ast> for Finder<'_> {
    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        if a.path().is_ident("no_mangle") {
            self.no_mangle += 1;
        }
        syn::visit::visit_attribute(self, a);
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.check(&f.attrs, &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.check(&f.attrs, &f.sig, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }
}

/// Every `extern "C" fn` defined in src/ffi, and the number of
/// `#[no_mangle]` attributes there.
fn extern_fns() -> (Vec<ExternFn>, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("src/ffi"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let (mut found, mut no_mangle) = (Vec::new(), 0);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut finder = Finder {
            file: &file,
            found: Vec::new(),
            no_mangle: 0,
        };
        syn::visit::Visit::visit_file(&mut finder, &ast);
        found.extend(finder.found);
        no_mangle += finder.no_mangle;
    }
    (found, no_mangle)
}

#[test]
fn every_export_runs_inside_the_boundary() {
    let (fns, no_mangle) = extern_fns();
    assert!(fns.len() > 40, "found only {} functions", fns.len());
    let wrong: Vec<String> = fns
        .iter()
        .filter_map(|f| {
            let p = f.problem.as_ref()?;
            Some(format!(
                "{}: {} must consist of one ffi_boundary!(\"{}\", ...) invocation: {p}",
                f.file, f.name, f.name
            ))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every #[no_mangle] item is one of those functions, and every exported
    // function is declared in the header.
    let exported: Vec<&String> = fns.iter().filter(|f| f.exported).map(|f| &f.name).collect();
    assert_eq!(
        no_mangle,
        exported.len(),
        "a #[no_mangle] item is not an extern \"C\" fn"
    );
    let header = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
    let declared = header_functions(&header);
    let mut exported_sorted: Vec<String> = exported.iter().map(|s| s.to_string()).collect();
    exported_sorted.sort();
    assert_eq!(
        declared, exported_sorted,
        "header declarations vs exported functions"
    );
}

/// Names of the functions declared in the header (`... moth_x(` at the
/// start of a declaration, outside comments and typedefs).
fn header_functions(header: &str) -> Vec<String> {
    let mut names: Vec<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('/') && !l.starts_with('#'))
        .filter(|l| !l.starts_with("typedef") && !l.starts_with('}'))
        .filter_map(|l| {
            let open = l.find('(')?;
            let before = &l[..open];
            let start = before.rfind([' ', '*'])? + 1;
            let name = &before[start..];
            name.starts_with("moth_").then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn null_pointers_are_refused_with_their_own_status() {
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = labelled_batch(4, 1);
    let (xt, yt) = (tensor(&x), tensor(&y));
    let cfg = config("{}");
    let key = cstring("seed");
    let mut buf = [0 as c_char; 64];
    let mut n = 0usize;
    let mut dummy_t: *mut moth_tensor = null_mut();
    let mut p: *mut c_void = null_mut();
    let mut b = false;
    let mut u = 0u64;
    let mut f = 0f64;
    let mut i = 0i32;
    let shape = [2i64];
    let data = [1f32, 2.0];
    let path = cstring("/nonexistent/x");
    // SAFETY: each call passes live handles except the one NULL under test.
    unsafe {
        let cases: Vec<(S, &str)> = vec![
            (
                moth_last_error(buf.as_mut_ptr(), buf.len(), null_mut()),
                "needed",
            ),
            (moth_config_new(null_mut()), "out_config"),
            (moth_config_set_json(null_mut(), key.as_ptr()), "config"),
            (moth_config_set_json(cfg, null()), "json"),
            (moth_config_set_int(null_mut(), key.as_ptr(), 1), "config"),
            (moth_config_set_int(cfg, null(), 1), "key"),
            (moth_config_set_uint(cfg, null(), 1), "key"),
            (moth_config_set_double(cfg, null(), 1.0), "key"),
            (moth_config_set_string(cfg, key.as_ptr(), null()), "value"),
            (moth_config_set_string(cfg, null(), key.as_ptr()), "key"),
            (
                moth_config_to_json(null(), buf.as_mut_ptr(), buf.len(), &mut n),
                "config",
            ),
            (
                moth_config_to_json(cfg, buf.as_mut_ptr(), buf.len(), null_mut()),
                "needed",
            ),
            (
                moth_tensor_from_buffer(
                    null(),
                    MOTH_DTYPE_FLOAT32,
                    shape.as_ptr(),
                    1,
                    CPU,
                    &mut dummy_t,
                ),
                "data",
            ),
            (
                moth_tensor_from_buffer(
                    data.as_ptr().cast(),
                    MOTH_DTYPE_FLOAT32,
                    null(),
                    1,
                    CPU,
                    &mut dummy_t,
                ),
                "shape",
            ),
            (
                moth_tensor_from_buffer(
                    data.as_ptr().cast(),
                    MOTH_DTYPE_FLOAT32,
                    shape.as_ptr(),
                    1,
                    CPU,
                    null_mut(),
                ),
                "out_tensor",
            ),
            (
                moth_tensor_from_at_tensor(null_mut(), &mut dummy_t),
                "at_tensor",
            ),
            (moth_tensor_from_at_tensor(p, null_mut()), "out_tensor"),
            (moth_tensor_to_at_tensor(null(), &mut p), "tensor"),
            (moth_tensor_to_at_tensor(xt, null_mut()), "out_at_tensor"),
            (
                moth_tensor_copy_to_buffer(null(), buf.as_mut_ptr().cast(), 4),
                "tensor",
            ),
            (moth_tensor_copy_to_buffer(yt, null_mut(), 1000), "out_data"),
            (moth_tensor_shape(null(), null_mut(), 0, &mut n), "tensor"),
            (moth_tensor_shape(xt, null_mut(), 0, null_mut()), "out_ndim"),
            (moth_tensor_shape(xt, null_mut(), 8, &mut n), "shape"),
            (moth_tensor_dtype(null(), &mut i), "tensor"),
            (moth_tensor_dtype(xt, null_mut()), "out_dtype"),
            (moth_tensor_device(null(), null_mut()), "out_device"),
            (
                moth_classifier_from_torchscript(null(), 1, 4, 4, CPU, &mut null_mut()),
                "path",
            ),
            (
                moth_classifier_from_torchscript(path.as_ptr(), 1, 4, 4, CPU, null_mut()),
                "out_classifier",
            ),
            (
                moth_classifier_from_callback(None, None, null_mut(), None, CPU, &mut null_mut()),
                "forward",
            ),
            (
                moth_classifier_from_callback(
                    Some(linear_forward),
                    None,
                    null_mut(),
                    None,
                    CPU,
                    null_mut(),
                ),
                "out_classifier",
            ),
            (moth_classifier_set_train(null_mut(), true), "classifier"),
            (
                moth_classifier_forward(null_mut(), xt, &mut dummy_t),
                "classifier",
            ),
            (moth_classifier_forward(clf, null(), &mut dummy_t), "input"),
            (moth_classifier_forward(clf, xt, null_mut()), "out_logits"),
            (
                moth_classifier_save(null_mut(), path.as_ptr()),
                "classifier",
            ),
            (moth_classifier_save(clf, null()), "path"),
            (
                moth_session_new(null(), 3, 1, 4, 4, &mut null_mut()),
                "config",
            ),
            (moth_session_new(cfg, 3, 1, 4, 4, null_mut()), "out_session"),
            (
                moth_session_harden_batch(null_mut(), clf, xt, yt, &mut dummy_t),
                "session",
            ),
            (
                moth_session_harden_batch(s, null_mut(), xt, yt, &mut dummy_t),
                "classifier",
            ),
            (
                moth_session_harden_batch(s, clf, null(), yt, &mut dummy_t),
                "'x'",
            ),
            (
                moth_session_harden_batch(s, clf, xt, null(), &mut dummy_t),
                "'y'",
            ),
            (
                moth_session_harden_batch(s, clf, xt, yt, null_mut()),
                "stamped_out",
            ),
            (
                moth_session_last_report(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_last_report(s, null_mut()), "out_report"),
            (moth_session_wants_accuracy(null(), &mut b), "session"),
            (moth_session_wants_accuracy(s, null_mut()), "out_wanted"),
            (
                moth_session_report_accuracy(null_mut(), 0.5, &mut std::mem::zeroed(), &mut f),
                "session",
            ),
            (
                moth_session_report_accuracy(s, 0.5, null_mut(), &mut f),
                "out_verdict",
            ),
            (
                moth_session_phase(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_phase(s, null_mut()), "out_phase"),
            (moth_session_step(null(), &mut u), "session"),
            (moth_session_step(s, null_mut()), "out_step"),
            (moth_session_is_done(null(), &mut b), "session"),
            (moth_session_is_done(s, null_mut()), "out_done"),
            (
                moth_session_accuracy(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_accuracy(s, null_mut()), "out_accuracy"),
            (
                moth_session_spec(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_spec(s, null_mut()), "out_spec"),
            (
                moth_session_config_json(null(), buf.as_mut_ptr(), buf.len(), &mut n),
                "session",
            ),
            (
                moth_session_config_json(s, buf.as_mut_ptr(), 4096, null_mut()),
                "needed",
            ),
            (
                moth_session_matrix(null(), MOTH_MATRIX_SIZE, [0f64; 9].as_mut_ptr(), 9),
                "session",
            ),
            (
                moth_session_matrix(s, MOTH_MATRIX_SIZE, null_mut(), 9),
                "out_values",
            ),
            (
                moth_session_last_error(s, buf.as_mut_ptr(), buf.len(), null_mut()),
                "",
            ),
            (
                moth_session_set_log_callback(null_mut(), None, null_mut(), None),
                "session",
            ),
            (
                moth_session_set_cuda_stream(null_mut(), 0, null_mut()),
                "session",
            ),
            (
                moth_session_cuda_stream(null(), &mut 0, &mut null_mut()),
                "session",
            ),
            (
                moth_session_cuda_stream(s, null_mut(), &mut null_mut()),
                "out_device",
            ),
            (
                moth_session_cuda_stream(s, &mut 0, null_mut()),
                "out_stream",
            ),
            (moth_buffer_data(null(), &mut null(), &mut n), "buffer"),
            (moth_session_save(null(), path.as_ptr()), "session"),
            (moth_session_save(s, null()), "path"),
            (moth_session_to_buffer(null(), &mut null_mut()), "session"),
            (moth_session_to_buffer(s, null_mut()), "out_buffer"),
            (
                moth_session_load(null(), 3, 1, 4, 4, &mut null_mut()),
                "path",
            ),
            (
                moth_session_load(path.as_ptr(), 3, 1, 4, 4, null_mut()),
                "out_session",
            ),
            (
                moth_session_from_buffer(null(), 10, 3, 1, 4, 4, &mut null_mut()),
                "data",
            ),
            (
                moth_session_from_buffer([0u8].as_ptr(), 1, 3, 1, 4, 4, null_mut()),
                "out_session",
            ),
        ];
        for (k, (st, needle)) in cases.into_iter().enumerate() {
            assert_eq!(st, S::NullPointer, "case {k} ({needle})");
        }
        // Messages name the argument (checked on a few, thread and session).
        expect(
            moth_config_set_json(cfg, null()),
            S::NullPointer,
            "argument 'json' is NULL",
        );
        assert_eq!(moth_session_step(s, null_mut()), S::NullPointer);
        assert!(
            session_error(s).contains("argument 'out_step' is NULL"),
            "{}",
            session_error(s)
        );
        // The buffer getters: `needed` is reported, nothing is written.
        let st = moth_config_to_json(cfg, null_mut(), 0, &mut n);
        assert_eq!(st, S::BufferTooSmall);
        assert!(n > 100, "needed {n}");
        assert_eq!(
            moth_config_to_json(cfg, null_mut(), n, &mut n),
            S::NullPointer
        );
        // Out-parameters are zeroed on entry even when the call fails.
        let mut out_s: *mut moth_session = 0x10 as *mut moth_session;
        assert_eq!(
            moth_session_new(null(), 3, 1, 4, 4, &mut out_s),
            S::NullPointer
        );
        assert!(out_s.is_null());
        let mut out_u = 77u64;
        assert_eq!(moth_session_step(null(), &mut out_u), S::NullPointer);
        assert_eq!(out_u, 0);
        // Freeing NULL does nothing.
        moth_config_free(null_mut());
        moth_session_free(null_mut());
        moth_tensor_free(null_mut());
        moth_classifier_free(null_mut());
        moth_buffer_free(null_mut());

        moth_tensor_free(xt);
        moth_tensor_free(yt);
        moth_config_free(cfg);
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

#[test]
fn status_names_and_invalid_utf8() {
    // SAFETY: static strings.
    unsafe {
        let name = |st: i32| {
            CStr::from_ptr(moth_status_name(st))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(name(0), "MOTH_STATUS_OK");
        assert_eq!(name(-8), "MOTH_STATUS_LABEL_OUT_OF_RANGE");
        assert_eq!(name(12345), "MOTH_STATUS_UNKNOWN");
        let header = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
        for st in moth_status::all() {
            let n = name(*st as i32);
            assert!(
                header.contains(&format!("{n} = {},", *st as i32)),
                "{n} = {} not in the header",
                *st as i32
            );
        }
        let cfg = config("{}");
        let bad = [b's', 0xff, b'd', 0];
        expect(
            moth_config_set_int(cfg, bad.as_ptr().cast(), 1),
            S::InvalidUtf8,
            "argument 'key' is not valid UTF-8",
        );
        moth_config_free(cfg);
    }
}

#[test]
fn wrong_shapes_dtypes_labels_and_values_get_their_codes() {
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = labelled_batch(4, 1);
    let cases: Vec<(Tensor, Tensor, S, &str)> = vec![
        (
            x.view([12, 1, 2, 8]),
            y.shallow_clone(),
            S::WrongShape,
            "batch must be [n, 1, 4, 4]",
        ),
        (
            x.view([12, 16]),
            y.shallow_clone(),
            S::WrongShape,
            "batch must be",
        ),
        (
            x.narrow(0, 0, 0),
            y.narrow(0, 0, 0),
            S::WrongShape,
            "batch is empty",
        ),
        (
            x.shallow_clone(),
            y.narrow(0, 0, 11),
            S::WrongShape,
            "labels must be [12]",
        ),
        (
            x.to_kind(Kind::Int64),
            y.shallow_clone(),
            S::WrongDtype,
            "floating-point",
        ),
        (
            x.shallow_clone(),
            y.to_kind(Kind::Float),
            S::WrongDtype,
            "labels must be integers",
        ),
        (
            x.shallow_clone(),
            y.ones_like() * 3,
            S::LabelOutOfRange,
            "label 3 out of range for 3 classes",
        ),
        (
            x.shallow_clone(),
            y.ones_like() * -1,
            S::LabelOutOfRange,
            "label -1 out of range",
        ),
        (
            x.shallow_clone() * 2.0 + 0.5,
            y.shallow_clone(),
            S::InvalidValue,
            "pixels must be in [0, 1]",
        ),
        (
            x.shallow_clone() / 0.0,
            y.shallow_clone(),
            S::InvalidValue,
            "NaN or infinite",
        ),
    ];
    for (xi, yi, want, needle) in cases {
        let st = harden(s, clf, &xi, &yi);
        assert_eq!(st, want, "{needle}: {}", session_error(s));
        assert!(session_error(s).contains(needle), "{}", session_error(s));
        assert!(thread_error().contains(needle), "{}", thread_error());
    }
    assert_eq!(step_of(s), 0, "failed calls leave the session unchanged");
    assert_eq!(harden(s, clf, &x, &y), S::Ok);
    assert_eq!(step_of(s), 1);
    // SAFETY: live handles.
    unsafe {
        let mut m = [0f64; 9];
        expect(
            moth_session_matrix(s, 9, m.as_mut_ptr(), 9),
            S::InvalidArgument,
            "unknown matrix 9",
        );
        expect(
            moth_session_matrix(s, MOTH_MATRIX_UNIV, m.as_mut_ptr(), 8),
            S::BufferTooSmall,
            "3x3",
        );
        assert_eq!(
            moth_session_matrix(s, MOTH_MATRIX_UNIV, m.as_mut_ptr(), 9),
            S::Ok
        );
        assert!(
            m[3] != 0.0 || m[6] != 0.0,
            "warm-up of target 0 filled column 0: {m:?}"
        );
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

/// An absurd class count is a configuration error with a message, not a
/// crash (panics themselves are covered by the boundary's unit test, which
/// also checks that a panicked session is poisoned).
#[test]
fn absurd_class_counts_are_refused() {
    let cfg = config("{}");
    let mut s = null_mut();
    // SAFETY: live config.
    let st = unsafe { moth_session_new(cfg, 1usize << 61, 1, 4, 4, &mut s) };
    assert_eq!(st, S::InvalidConfig, "{}", thread_error());
    assert!(s.is_null());
    let msg = thread_error();
    assert!(msg.contains("classes"), "{msg}");
    // SAFETY: live config.
    unsafe { moth_config_free(cfg) };
}

/// No call leaves the host's thread with another grad mode than it had:
/// failing calls (a callback failing inside the inversion, which runs with
/// autograd on, or inside a no-grad forward), calls whose callback switched
/// autograd off and left it so, and successful steps, with autograd on and
/// off in the host.
#[test]
fn calls_leave_the_hosts_grad_mode_as_it_was() {
    use moth::torch::grad::{is_enabled, GradGuard};
    let s = session(QUICK);
    let (x, y) = labelled_batch(4, 6);
    let failing = {
        let mut m = LinearCallbacks::new();
        m.fail_with = Some(3);
        classifier_with(m)
    };
    let switching = {
        let mut m = LinearCallbacks::new();
        m.grad_off = true;
        classifier_with(m)
    };
    let plain = classifier();
    for host_mode in [true, false] {
        let _host = GradGuard::set(host_mode);
        // The switching callback's logits do not require gradients, which
        // the inversion refuses.
        for (clf, hardened, want) in [
            (failing, S::Callback, S::Callback),
            (switching, S::Callback, S::Ok),
            (plain, S::Ok, S::Ok),
        ] {
            assert_eq!(harden(s, clf, &x, &y), hardened, "{}", session_error(s));
            assert_eq!(is_enabled(), host_mode, "after harden_batch ({hardened:?})");
            if clf == switching {
                let msg = session_error(s);
                assert!(msg.contains("do not require gradients"), "{msg}");
            }
            let xt = tensor(&x);
            let mut logits = null_mut();
            // SAFETY: live handles.
            let st = unsafe { moth_classifier_forward(clf, xt, &mut logits) };
            assert_eq!(st, want);
            assert_eq!(
                is_enabled(),
                host_mode,
                "after classifier_forward ({want:?})"
            );
            // SAFETY: made above (NULL is fine).
            unsafe {
                moth_tensor_free(logits);
                moth_tensor_free(xt);
            }
        }
        // A call refused before any work (a NULL argument).
        let mut step = 0;
        // SAFETY: NULL session is what is tested.
        assert_eq!(
            unsafe { moth_session_step(null(), &mut step) },
            S::NullPointer
        );
        assert_eq!(is_enabled(), host_mode);
    }
    assert!(is_enabled());
    // SAFETY: live handles.
    unsafe {
        for clf in [failing, switching, plain] {
            moth_classifier_free(clf);
        }
        moth_session_free(s);
    }
}

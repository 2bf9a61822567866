//! `moth bench` variants: `METHOD[:BOUNDS][+KEY=VALUE...]`, each a complete
//! set of session and training-loop settings, so that one command line
//! reruns a whole lever table.

use moth::runner::RunConfig;
use moth::session::{Method, Preset, SessionConfig};
use serde_json::{Map, Value};

use crate::args::{preset_session_config, BenchArgs, BoundsArg};

/// One benchmark variant.
#[derive(Debug, Clone)]
pub struct Variant {
    /// As written on the command line.
    pub name: String,
    /// The preset it started from.
    pub preset: Preset,
    /// Session settings.
    pub session: SessionConfig,
    /// Training loop settings.
    pub run: RunConfig,
    /// Clean statistics as the variant set them (`None`: the preset's).
    pub clean_statistics: Option<bool>,
}

fn bad(v: &str, why: String) -> moth::Error {
    moth::Error::Config(format!("variant '{v}': {why}"))
}

/// `{"a": {"b": value}}` for the dotted key `a.b`.
fn dotted_patch(key: &str, value: Value) -> Value {
    key.rsplit('.').fold(value, |inner, part| {
        let mut m = Map::new();
        m.insert(part.to_string(), inner);
        Value::Object(m)
    })
}

/// A value as JSON when it parses, else as a string (`method=Moth`).
fn json_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// Parses one variant on top of `--preset`, `--session-config`, `--epochs`
/// and `--seed`.
pub fn parse(a: &BenchArgs, v: &str) -> moth::Result<Variant> {
    let mut parts = v.split('+');
    let head = parts.next().unwrap_or_default();
    let overrides: Vec<(&str, &str)> = parts
        .map(|p| {
            p.split_once('=')
                .ok_or_else(|| bad(v, format!("'{p}' is not KEY=VALUE")))
        })
        .collect::<moth::Result<_>>()?;
    let preset = match overrides.iter().find(|(k, _)| *k == "preset") {
        Some((_, name)) => name.parse()?,
        None => a.preset,
    };
    let (method, bounds) = head.split_once(':').unwrap_or((head, "fixed"));
    let bounds =
        BoundsArg::parse(bounds).ok_or_else(|| bad(v, format!("unknown bounds '{bounds}'")))?;
    let mut session = preset_session_config(preset, a.session_config.as_deref())?;
    let mut run = RunConfig {
        epochs: a.epochs,
        ..RunConfig::for_preset(preset)
    };
    let mut clean_statistics = None;
    for (key, raw) in overrides {
        match key {
            "preset" => {}
            "lr" => run.optimizer.lr = number(v, key, raw)?,
            "epochs" => run.epochs = number(v, key, raw)?,
            "clean_statistics" => clean_statistics = Some(number(v, key, raw)? != 0.0),
            _ => {
                session = session
                    .with_patch(dotted_patch(key, json_value(raw)))
                    .map_err(|e| bad(v, format!("{key}: {e}")))?;
            }
        }
    }
    session.method = method.parse::<Method>()?;
    session.seed = a.common.seed;
    session.bounds.mode = bounds.mode();
    session.validate()?;
    run.optimizer.validate()?;
    if let Some(on) = clean_statistics {
        run.clean_statistics = on;
    }
    Ok(Variant {
        name: v.to_string(),
        preset,
        session,
        run,
        clean_statistics,
    })
}

fn number(v: &str, key: &str, raw: &str) -> moth::Result<f64> {
    match raw.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(bad(v, format!("{key} must be a number >= 0, got '{raw}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> BenchArgs {
        let cli = crate::args::Cli::parse_from([&["moth", "bench"], extra].concat());
        match cli.command {
            crate::args::Command::Bench(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn levers_apply_on_top_of_the_preset() {
        let a = args(&["--epochs", "0.5"]);
        let v = parse(
            &a,
            "moth:growing+pairs_per_step=3+warmup.budget.steps=40+lr=1e-3",
        )
        .unwrap();
        assert_eq!(v.preset, Preset::Default);
        assert_eq!(v.session.pairs_per_step, 3);
        assert_eq!(v.session.warmup.budget.steps, 40);
        assert_eq!(v.session.warmup.budget.asr_bound, 0.99, "siblings kept");
        assert_eq!(
            v.session.bounds.mode,
            moth::algo::bounds::BoundsMode::Growing
        );
        assert_eq!(v.run.optimizer.lr, 1e-3);
        assert_eq!(v.run.epochs, 0.5);
        assert!(v.run.clean_statistics, "the default preset's");
        assert_eq!(v.clean_statistics, None);
        let c = parse(&a, "moth+clean_statistics=0").unwrap();
        assert!(!c.run.clean_statistics);
        assert_eq!(c.clean_statistics, Some(false));
        let r = parse(&a, "moth+preset=reference+epochs=2").unwrap();
        assert_eq!(r.session, {
            let mut c = SessionConfig::reference();
            c.seed = a.common.seed;
            c
        });
        assert_eq!(r.run.epochs, 2.0);
        assert!(
            !r.run.clean_statistics,
            "the reference keeps the authors' loop"
        );
    }

    #[test]
    fn bad_levers_are_refused_with_the_variant_named() {
        let a = args(&[]);
        for bad in [
            "moth+pairs_per_step",
            "moth+nosuch=1",
            "moth+lr=-1",
            "moth+preset=fast",
            "moth+portion=2",
        ] {
            let e = parse(&a, bad).unwrap_err().to_string();
            assert!(e.contains("invalid configuration"), "{bad}: {e}");
        }
    }

    /// The variants of scripts/levers.sh, as the shell expands them.
    fn lever_script_variants() -> Vec<String> {
        let script = include_str!("../../../scripts/levers.sh");
        let reference = "moth+preset=reference";
        script
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix('"'))
            .filter_map(|l| l.split_once('"').map(|(v, _)| v.replace("$ref", reference)))
            .collect()
    }

    #[test]
    fn every_variant_of_the_lever_script_parses() {
        let variants = lever_script_variants();
        assert!(variants.len() >= 12, "{variants:?}");
        let a = args(&[]);
        for v in &variants {
            parse(&a, v).unwrap_or_else(|e| panic!("{v}: {e}"));
        }
        let reference = parse(&a, &variants[0]).unwrap();
        assert_eq!(reference.preset, Preset::Reference);
        // The default preset is a row, with the preset's own epoch budget
        // (bench's --epochs would otherwise cut it).
        let default_row = |v: &String| {
            let p = parse(&a, v).unwrap();
            p.preset == Preset::Default
                && p.session == Preset::Default.session_config()
                && p.run.epochs == RunConfig::for_preset(Preset::Default).epochs
        };
        assert!(variants.iter().any(default_row), "{variants:?}");
    }
}

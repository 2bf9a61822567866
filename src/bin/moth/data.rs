//! Which data a run is made on: the path given to `--data` (its format
//! detected and printed), the reading options, and a CRC32 of the content.
//! `moth harden` keeps it in the run notes, so that a resumed run continues
//! on the data it started on and never silently on another.

use std::path::{Path, PathBuf};

use moth::io::data_source::{DataOptions, DataSource};

use crate::args::Common;

/// Opens the data of a command's `--data` (or the default folder) and says
/// what was found.
pub fn open(common: &Common) -> moth::Result<DataSource> {
    open_path(&common.data_dir(), common.data_options.options())
}

/// Opens `path` with `options` and prints the one-line summary.
pub fn open_path(path: &Path, options: DataOptions) -> moth::Result<DataSource> {
    let source = DataSource::open(path, options)?;
    println!("data: {}", source.summary());
    Ok(source)
}

/// The identity of a run's data.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataId {
    /// The path, canonical (absolute, links resolved).
    pub dir: PathBuf,
    /// How it was read.
    pub options: DataOptions,
    /// The source's fingerprint (see `DataSource::fingerprint`).
    pub crc32: u32,
}

impl DataId {
    /// The identity of `source`.
    pub fn of(source: &DataSource) -> moth::Result<DataId> {
        let path = source.path();
        let dir = std::fs::canonicalize(path)
            .map_err(|e| moth::Error::io(format!("resolving {}", path.display()), e))?;
        Ok(DataId {
            dir,
            options: source.options().clone(),
            crc32: source.fingerprint()?,
        })
    }

    /// The data to resume on: the recorded one, unless `given` names
    /// another. Refused when the paths differ or the data changed since the
    /// run started (the run would go on with other data).
    pub fn resume_source(&self, given: Option<&Path>) -> moth::Result<DataSource> {
        let recorded = self.dir.display();
        if let Some(given) = given {
            let same = std::fs::canonicalize(given).is_ok_and(|g| g == self.dir);
            if !same {
                return Err(moth::Error::Config(format!(
                    "this run was made on the data in {recorded}, not {}: resume without \
                     --data (or with --data {recorded})",
                    given.display()
                )));
            }
        }
        let source = open_path(&self.dir, self.options.clone())?;
        let now = source.fingerprint()?;
        if now != self.crc32 {
            return Err(moth::Error::Config(format!(
                "the data in {recorded} changed since this run started (CRC32 {now:08x}, \
                 the run recorded {:08x}): the run cannot continue on other data",
                self.crc32
            )));
        }
        Ok(source)
    }
}

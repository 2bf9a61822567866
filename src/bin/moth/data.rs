//! Which data a run is made on: the folder of its IDX files and a CRC32 of
//! their content. `moth harden` keeps it in the run notes, so that a resumed
//! run continues on the data it started on and never silently on another.

use std::path::{Path, PathBuf};

use moth::io::dataset::{Dataset, Split};

/// The identity of a data folder.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataId {
    /// The folder, canonical (absolute, links resolved).
    pub dir: PathBuf,
    /// CRC32 of the four IDX files, train then test, images then labels.
    pub crc32: u32,
}

impl DataId {
    /// Reads and checksums the IDX files the commands load from `dir`.
    pub fn of(dir: &Path) -> moth::Result<DataId> {
        let mut hasher = crc32fast::Hasher::new();
        for split in [Split::Train, Split::Test] {
            for file in Dataset::fashion_mnist_files(Some(dir), split)? {
                let bytes = std::fs::read(&file)
                    .map_err(|e| moth::Error::io(format!("reading {}", file.display()), e))?;
                hasher.update(&bytes);
            }
        }
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| moth::Error::io(format!("resolving {}", dir.display()), e))?;
        Ok(DataId {
            dir,
            crc32: hasher.finalize(),
        })
    }

    /// The data folder to resume on: the recorded one, unless `given` names
    /// another. Refused when the folders differ or the files changed since
    /// the run started (the run would go on with other data).
    pub fn resume_dir(&self, given: Option<&Path>) -> moth::Result<PathBuf> {
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
        let now = DataId::of(&self.dir)?;
        if now.crc32 != self.crc32 {
            return Err(moth::Error::Config(format!(
                "the data in {recorded} changed since this run started (CRC32 {:08x}, \
                 the run recorded {:08x}): the run cannot continue on other data",
                now.crc32, self.crc32
            )));
        }
        Ok(self.dir.clone())
    }
}

//! Which data a path holds, and how to read it: the format is detected from
//! what is there (an IDX folder, an image tree, an `.npz` archive, a folder
//! of `.npy` files), class names come from the data or a names file, and the
//! training split is read whole or batch by batch.
//!
//! Memory: the test split is always read whole (`n * C * H * W * 4` bytes of
//! float32 pixels). The training split is read whole unless it is an image
//! tree whose decoded pixels would exceed [`IN_MEMORY_LIMIT`] (or streaming
//! is asked for): then it is a list of files, and each batch is decoded when
//! the training loop asks for it, so memory holds one batch.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::io::dataset::{BatchSource, Dataset, Split, FASHION_MNIST_CLASSES};
use crate::io::idx::{read_idx, read_idx_dims};
use crate::io::image_folder::{self, ImageFolder};
use crate::io::numpy::{self, Layout};
use crate::{Error, Result};

/// Decoded training pixels above which an image tree is streamed.
pub const IN_MEMORY_LIMIT: u64 = 2 << 30;

/// The formats `--data` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataFormat {
    /// A folder of MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, ...).
    Idx,
    /// `train/<class>/*.png|jpg` and `test/<class>/...`.
    ImageFolder,
    /// One `.npz` archive with `x_train`, `y_train`, `x_test`, `y_test`.
    Npz,
    /// A folder with `x_train.npy`, `y_train.npy`, `x_test.npy`, `y_test.npy`.
    NpyFolder,
}

impl DataFormat {
    /// The format in words.
    pub fn describe(self) -> &'static str {
        match self {
            DataFormat::Idx => "IDX files",
            DataFormat::ImageFolder => "an image folder tree",
            DataFormat::Npz => "a NumPy .npz archive",
            DataFormat::NpyFolder => "NumPy .npy files",
        }
    }
}

/// How to read the data; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataOptions {
    /// A text file with one class name per line, in label order.
    pub classes_file: Option<PathBuf>,
    /// Where a NumPy image array keeps its channels (inferred when None).
    pub layout: Option<Layout>,
    /// Resize every image of a tree to (height, width); without it, images
    /// of another size than the first are refused.
    pub image_size: Option<(u32, u32)>,
    /// Stream the training split of an image tree even when it fits.
    pub stream: bool,
}

/// A data path with its format and class names, ready to load splits from.
#[derive(Debug, Clone)]
pub struct DataSource {
    path: PathBuf,
    format: DataFormat,
    options: DataOptions,
    classes: Vec<String>,
    /// What the training split holds, in words (shape, type, layout).
    held: String,
    /// `[C, H, W]` of its images.
    shape: [i64; 3],
}

fn shape_text(s: [i64; 3]) -> String {
    format!("{}x{}x{}", s[0], s[1], s[2])
}

/// Reads a class-names file: one name per line, blank lines ignored.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(Error::format(path, "holds no class name"));
    }
    Ok(names)
}

/// The format of `path`, or an error saying what was looked for.
pub fn detect(path: &Path) -> Result<DataFormat> {
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("npz") => Ok(DataFormat::Npz),
            _ => Err(Error::format(
                path,
                "is a file but not a .npz archive (--data takes a .npz file, or a folder of \
                 IDX files, .npy files or train/ and test/ image folders)",
            )),
        };
    }
    if !path.is_dir() {
        return Err(Error::format(path, "not found"));
    }
    // A folder with only the test split serves `moth distance`; commands
    // that train say which files are missing when they open the train split.
    let idx = |split| Dataset::fashion_mnist_files(Some(path), split).is_ok();
    if idx(Split::Train) || idx(Split::Test) {
        Ok(DataFormat::Idx)
    } else if path.join("x_train.npy").is_file() {
        Ok(DataFormat::NpyFolder)
    } else if image_folder::is_image_tree(path) {
        Ok(DataFormat::ImageFolder)
    } else {
        Err(Error::format(
            path,
            "not found: holds no train- or t10k-images-idx3-ubyte[.gz], no x_train.npy and no train/ \
             folder (install Fashion-MNIST with scripts/setup.sh, or point --data at your data)",
        ))
    }
}

impl DataSource {
    /// Detects the format of `path` and reads its class names.
    pub fn open(path: &Path, options: DataOptions) -> Result<Self> {
        let format = detect(path)?;
        let classes = match (&options.classes_file, format) {
            (Some(file), _) => read_class_names(file)?,
            (None, DataFormat::ImageFolder) => image_folder::class_names(path)?,
            (None, DataFormat::Idx) => FASHION_MNIST_CLASSES.map(String::from).to_vec(),
            // NumPy arrays carry no names: the labels' numbers, counted
            // when the splits are read.
            (None, _) => Vec::new(),
        };
        let mut source = DataSource {
            path: path.to_path_buf(),
            format,
            options,
            classes,
            held: String::new(),
            shape: [0; 3],
        };
        source.held = match format {
            DataFormat::Idx => {
                // The shape from the training images, or from the test
                // images of a folder that holds only those.
                let [images, _] = Dataset::fashion_mnist_files(Some(path), Split::Train)
                    .or_else(|_| Dataset::fashion_mnist_files(Some(path), Split::Test))?;
                let dims = read_idx_dims(&images)?;
                source.shape = match dims.as_slice() {
                    &[_, h, w] => [1, h as i64, w as i64],
                    &[_, c, h, w] => [c as i64, h as i64, w as i64],
                    d => {
                        return Err(Error::format(
                            &images,
                            format!("image file must be 3-D or 4-D, has dimensions {d:?}"),
                        ))
                    }
                };
                format!("{} images of {}", dims[0], shape_text(source.shape))
            }
            DataFormat::ImageFolder => {
                let split = source.image_split(Split::Train)?;
                source.shape = split.input_shape();
                let how = match split.resizes() {
                    true => "all resized to it",
                    false => "the first image's size; other sizes are refused",
                };
                format!(
                    "{} images of {} ({how})",
                    split.len(),
                    shape_text(source.shape)
                )
            }
            DataFormat::Npz | DataFormat::NpyFolder => source.numpy_summary()?,
        };
        Ok(source)
    }

    /// `[C, H, W]` of the images.
    pub fn input_shape(&self) -> [i64; 3] {
        self.shape
    }

    /// Reads the NumPy splits once: the class count when no names were
    /// given, and what the training array holds.
    fn numpy_summary(&mut self) -> Result<String> {
        let mut most = 0;
        let mut held = String::new();
        for split in [Split::Train, Split::Test] {
            let s = numpy::read_split(&self.path, split, self.options.layout)?;
            most = most.max(s.labels.iter().max().map_or(0, |&m| m + 1));
            if split == Split::Train {
                let d = s.images.size();
                self.shape = [d[1], d[2], d[3]];
                let how = match (s.layout, self.options.layout) {
                    (None, _) => "one channel".to_string(),
                    (Some(l), Some(_)) => format!("read as {}", l.name().to_uppercase()),
                    (Some(l), None) => format!("read as {} (inferred)", l.name().to_uppercase()),
                };
                held = format!(
                    "x_train {}, {how}: images of {}",
                    s.stored,
                    shape_text(self.shape)
                );
            }
        }
        if self.classes.is_empty() {
            self.classes = (0..most).map(|i| i.to_string()).collect();
        }
        Ok(held)
    }

    /// The data in one line: path, format, what it holds, the classes.
    pub fn summary(&self) -> String {
        let shown: Vec<&str> = self.classes.iter().take(12).map(String::as_str).collect();
        let more = if self.classes.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        format!(
            "{} ({}: {}; {} classes: {}{more})",
            self.path.display(),
            self.format.describe(),
            self.held,
            self.classes.len(),
            shown.join(", ")
        )
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The detected format.
    pub fn format(&self) -> DataFormat {
        self.format
    }

    /// The options it was opened with.
    pub fn options(&self) -> &DataOptions {
        &self.options
    }

    /// Class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_split(&self, split: Split) -> Result<ImageFolder> {
        ImageFolder::open(&self.path, split, &self.classes, self.options.image_size)
    }

    /// A whole split, in memory.
    pub fn load(&self, split: Split) -> Result<Dataset> {
        match self.format {
            DataFormat::Idx => {
                let [images, labels] = Dataset::fashion_mnist_files(Some(&self.path), split)?;
                Dataset::from_idx(
                    &read_idx(&images)?,
                    &read_idx(&labels)?,
                    self.classes.clone(),
                    &labels,
                )
            }
            DataFormat::ImageFolder => self.image_split(split)?.load(),
            DataFormat::Npz | DataFormat::NpyFolder => {
                let s = numpy::read_split(&self.path, split, self.options.layout)?;
                let labels = tch::Tensor::f_from_slice(&s.labels)?;
                let d = Dataset {
                    images: s.images,
                    labels,
                    classes: self.classes.clone(),
                };
                d.check_labels(&self.classes, &self.path)?;
                Ok(d)
            }
        }
    }

    /// The training split: in memory, or (an image tree over
    /// [`IN_MEMORY_LIMIT`], or with streaming asked for) read per batch.
    pub fn training(&self) -> Result<Box<dyn BatchSource>> {
        if self.format == DataFormat::ImageFolder {
            let split = self.image_split(Split::Train)?;
            if self.options.stream || split.decoded_bytes() > IN_MEMORY_LIMIT {
                return Ok(Box::new(split));
            }
            return Ok(Box::new(split.load()?));
        }
        Ok(Box::new(self.load(Split::Train)?))
    }

    /// Whether [`DataSource::training`] streams.
    pub fn streams_training(&self) -> Result<bool> {
        Ok(self.format == DataFormat::ImageFolder
            && (self.options.stream
                || self.image_split(Split::Train)?.decoded_bytes() > IN_MEMORY_LIMIT))
    }

    /// A CRC32 that changes when the data does: of every byte of IDX and
    /// NumPy files; of the file names, lengths and labels of an image tree.
    pub fn fingerprint(&self) -> Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        let hash_file = |hasher: &mut crc32fast::Hasher, file: &Path| -> Result<()> {
            let bytes = std::fs::read(file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            hasher.update(&bytes);
            Ok(())
        };
        match self.format {
            DataFormat::Idx => {
                for split in [Split::Train, Split::Test] {
                    for file in Dataset::fashion_mnist_files(Some(&self.path), split)? {
                        hash_file(&mut hasher, &file)?;
                    }
                }
            }
            DataFormat::Npz => hash_file(&mut hasher, &self.path)?,
            DataFormat::NpyFolder => {
                for name in ["x_train", "y_train", "x_test", "y_test"] {
                    hash_file(&mut hasher, &self.path.join(format!("{name}.npy")))?;
                }
            }
            DataFormat::ImageFolder => {
                for split in [Split::Train, Split::Test] {
                    self.image_split(split)?.fingerprint(&mut hasher)?;
                }
            }
        }
        if let Some(file) = &self.options.classes_file {
            hash_file(&mut hasher, file)?;
        }
        Ok(hasher.finalize())
    }
}

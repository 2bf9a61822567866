//! Labelled image sets in memory, and the embedded default (Fashion-MNIST).
//!
//! Pixels are held in `[0, 1]`: dataset normalisation, if any, belongs to
//! the model wrapper and runs after stamping (docs/algorithm.md section 1).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::io::idx::{read_idx, IdxArray};
use crate::labels::per_class_indices;
use crate::{Error, Result};

/// Where the Debian package `dataset-fashion-mnist` installs the data.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The ten Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Labelled images in memory: `images` is `[n, C, H, W]` float in `[0,1]`,
/// `labels` is `[n]` int64, both on the CPU.
#[derive(Debug)]
pub struct Dataset {
    /// Images, `[n, C, H, W]`, `Kind::Float`, values in `[0, 1]`.
    pub images: Tensor,
    /// Class labels, `[n]`, `Kind::Int64`.
    pub labels: Tensor,
    /// Class names, one per label value.
    pub classes: Vec<String>,
}

/// A training split that hands out mini-batches: a [`Dataset`] in memory,
/// or a source that reads each batch from its files when asked (an image
/// folder larger than memory). The training loops take this, so that they
/// never need the whole split at once.
pub trait BatchSource {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Class names, one per label value.
    fn classes(&self) -> &[String];
    /// `[C, H, W]` of one image.
    fn input_shape(&self) -> [i64; 3];
    /// The images (`[n, C, H, W]` float in `[0, 1]`) and labels (`[n]`
    /// int64) at `indices`, on the CPU.
    fn gather(&self, indices: &[i64]) -> Result<(Tensor, Tensor)>;
    /// True when the split holds no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes.
    fn num_classes(&self) -> usize {
        self.classes().len()
    }
}

impl BatchSource for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn input_shape(&self) -> [i64; 3] {
        Dataset::input_shape(self)
    }
    fn gather(&self, indices: &[i64]) -> Result<(Tensor, Tensor)> {
        let batch = self.select(indices)?;
        Ok((batch.images, batch.labels))
    }
}

/// Which half of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out test images.
    Test,
}

impl Split {
    /// `train` or `test`, the folder names of an image tree.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl Dataset {
    /// Builds a dataset from an IDX image array (`[n, H, W]` or `[n, C, H, W]`)
    /// and an IDX label array (`[n]`), checking that they agree and that every
    /// label names a class.
    pub fn from_idx(
        images: &IdxArray,
        labels: &IdxArray,
        classes: Vec<String>,
        path: &Path,
    ) -> Result<Self> {
        let shape: Vec<i64> = match images.dims.as_slice() {
            [n, h, w] => vec![*n as i64, 1, *h as i64, *w as i64],
            [n, c, h, w] => vec![*n as i64, *c as i64, *h as i64, *w as i64],
            d => {
                return Err(Error::format(
                    path,
                    format!("image file must be 3-D or 4-D, has dimensions {d:?}"),
                ))
            }
        };
        if labels.dims.len() != 1 {
            return Err(Error::format(
                path,
                format!("label file must be 1-D, has dimensions {:?}", labels.dims),
            ));
        }
        if labels.dims[0] != images.dims[0] {
            return Err(Error::format(
                path,
                format!("{} images but {} labels", images.dims[0], labels.dims[0]),
            ));
        }
        if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(Error::format(
                path,
                format!("label {bad} out of range for {} classes", classes.len()),
            ));
        }
        let images = Tensor::f_from_slice(&images.data)?
            .f_reshape(&shape)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?;
        let labels = Tensor::f_from_slice(&labels.data)?.f_to_kind(Kind::Int64)?;
        Ok(Dataset {
            images,
            labels,
            classes,
        })
    }

    /// Loads Fashion-MNIST from `dir` (default [`FASHION_MNIST_DIR`]).
    pub fn fashion_mnist(dir: Option<&Path>, split: Split) -> Result<Self> {
        let [image_path, label_path] = Self::fashion_mnist_files(dir, split)?;
        let images = read_idx(&image_path)?;
        let labels = read_idx(&label_path)?;
        let classes = FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect();
        Self::from_idx(&images, &labels, classes, &label_path)
    }

    /// The image and label files [`Dataset::fashion_mnist`] reads for
    /// `split` from `dir` (default [`FASHION_MNIST_DIR`]): gzipped ones when
    /// present, else plain ones. Fails when either is missing.
    pub fn fashion_mnist_files(dir: Option<&Path>, split: Split) -> Result<[PathBuf; 2]> {
        let dir: PathBuf = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| FASHION_MNIST_DIR.into());
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let find = |stem: &str| -> Result<PathBuf> {
            for name in [format!("{prefix}-{stem}.gz"), format!("{prefix}-{stem}")] {
                let p = dir.join(name);
                if p.exists() {
                    return Ok(p);
                }
            }
            Err(Error::format(
                dir.join(format!("{prefix}-{stem}.gz")),
                "not found (install it with scripts/setup.sh, or `apt-get install dataset-fashion-mnist`)",
            ))
        };
        Ok([find("images-idx3-ubyte")?, find("labels-idx1-ubyte")?])
    }

    /// Refuses a label that names none of `classes` (`path` labels the error).
    pub fn check_labels(&self, classes: &[String], path: &Path) -> Result<()> {
        let labels = self.labels_vec();
        match labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= classes.len())
        {
            Some(bad) => Err(Error::format(
                path,
                format!("label {bad} out of range for {} classes", classes.len()),
            )),
            None => Ok(()),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// True when the dataset holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// `[C, H, W]` of one image.
    pub fn input_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    /// Labels as a host vector.
    pub fn labels_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(&self.labels).unwrap_or_default()
    }

    /// The samples at `indices`, as a new dataset.
    pub fn select(&self, indices: &[i64]) -> Result<Dataset> {
        let idx = Tensor::f_from_slice(indices)?;
        Ok(Dataset {
            images: self.images.f_index_select(0, &idx)?,
            labels: self.labels.f_index_select(0, &idx)?,
            classes: self.classes.clone(),
        })
    }

    /// The first `per_class` samples of every class (in file order), a
    /// deterministic, class-balanced subset.
    pub fn balanced_subset(&self, per_class: usize) -> Result<Dataset> {
        let idx = per_class_indices(&self.labels_vec(), self.num_classes(), per_class);
        self.select(&idx.into_iter().flatten().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::idx::parse_idx;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parses_valid_idx() {
        let a = parse_idx(&idx(&[2, 2], &[1, 2, 3, 4]), Path::new("x")).unwrap();
        assert_eq!(a.dims, vec![2, 2]);
        assert_eq!(a.data, vec![1, 2, 3, 4]);
    }

    #[test]
    fn rejects_malformed_idx() {
        let p = Path::new("x");
        let err = |b: &[u8]| parse_idx(b, p).unwrap_err().to_string();
        assert!(err(&[0, 0]).contains("truncated IDX header"));
        assert!(err(&[1, 0, 8, 1, 0, 0, 0, 0]).contains("not an IDX file"));
        assert!(err(&[0, 0, 0x0d, 1, 0, 0, 0, 0]).contains("unsupported IDX element type"));
        assert!(err(&[0, 0, 8, 0]).contains("zero dimensions"));
        assert!(err(&[0, 0, 8, 2, 0, 0, 0, 1]).contains("truncated IDX header"));
        assert!(err(&idx(&[3], &[1, 2])).contains("truncated IDX data"));
        assert!(err(&idx(&[1], &[1, 2])).contains("trailing bytes"));
    }

    #[test]
    fn rejects_mismatched_images_and_labels() {
        let p = Path::new("x");
        let images = parse_idx(&idx(&[2, 1, 1], &[0, 255]), p).unwrap();
        let labels = parse_idx(&idx(&[3], &[0, 1, 1]), p).unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        let e = Dataset::from_idx(&images, &labels, classes.clone(), p).unwrap_err();
        assert!(e.to_string().contains("2 images but 3 labels"), "{e}");
        let labels = parse_idx(&idx(&[2], &[0, 2]), p).unwrap();
        let e = Dataset::from_idx(&images, &labels, classes.clone(), p).unwrap_err();
        assert!(e.to_string().contains("label 2 out of range"), "{e}");
        let flat = parse_idx(&idx(&[2], &[0, 1]), p).unwrap();
        let e = Dataset::from_idx(&flat, &flat, classes.clone(), p).unwrap_err();
        assert!(e.to_string().contains("3-D or 4-D"), "{e}");
        let labels = parse_idx(&idx(&[2], &[0, 1]), p).unwrap();
        let d = Dataset::from_idx(&images, &labels, classes, p).unwrap();
        assert_eq!(d.images.size(), vec![2, 1, 1, 1]);
        assert_eq!(d.images.double_value(&[1, 0, 0, 0]), 1.0);
    }

    #[test]
    fn reads_gzip_and_plain_files() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx(&[2], &[7, 9]);
        std::fs::write(dir.path().join("plain"), &bytes).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        std::fs::write(dir.path().join("z.gz"), gz.finish().unwrap()).unwrap();
        assert_eq!(
            read_idx(&dir.path().join("plain")).unwrap().data,
            vec![7, 9]
        );
        assert_eq!(read_idx(&dir.path().join("z.gz")).unwrap().data, vec![7, 9]);
        for name in ["plain", "z.gz"] {
            let dims = crate::io::idx::read_idx_dims(&dir.path().join(name)).unwrap();
            assert_eq!(dims, vec![2]);
        }
        std::fs::write(dir.path().join("bad.gz"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read_idx(&dir.path().join("bad.gz"))
            .unwrap_err()
            .to_string()
            .contains("corrupt gzip"));
    }
}

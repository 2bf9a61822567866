//! The image tree torchvision's `ImageFolder` reads: `ROOT/train/<class>/`
//! and `ROOT/test/<class>/` folders of PNG or JPEG files, the class names
//! being the folder names (sorted, as torchvision sorts them). Files are
//! decoded with the `image` crate, on demand: a split is a list of files,
//! and only the images asked for are read, so a tree larger than memory can
//! be trained on batch by batch.
//!
//! Every image of a tree must have the size of the first one, or all are
//! resized to a size given explicitly; a tree of mixed sizes without one is
//! refused (a silent resize would change what the model sees). The channel
//! count is the first image's: 1 for grey images, else 3 (an alpha channel
//! is dropped); other images are converted to it.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader};
use tch::Tensor;

use crate::io::dataset::{BatchSource, Dataset, Split};
use crate::{Error, Result};

/// File extensions read as images (compared in lower case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One split of an image tree: its files and their labels, read on demand.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    dir: PathBuf,
    classes: Vec<String>,
    files: Vec<PathBuf>,
    labels: Vec<i64>,
    shape: [i64; 3],
    resize: Option<(u32, u32)>,
}

/// Whether `root` is laid out as an image tree (has a `train` folder).
pub fn is_image_tree(root: &Path) -> bool {
    root.join(Split::Train.name()).is_dir()
}

/// The sorted names of the sub-folders of `dir`.
fn sub_folders(dir: &Path) -> Result<Vec<String>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The sorted image files of a class folder.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if path.is_file() && EXTENSIONS.contains(&ext.as_str()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The class names of a tree: the folders of `ROOT/train`.
pub fn class_names(root: &Path) -> Result<Vec<String>> {
    let dir = root.join(Split::Train.name());
    let names = sub_folders(&dir)?;
    if names.is_empty() {
        return Err(Error::format(
            &dir,
            "holds no class folder (expected train/<class>/*.png or *.jpg)",
        ));
    }
    Ok(names)
}

/// Opens an image file, with the path in every error.
fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .with_guessed_format()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    reader
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode the image: {e}")))
}

impl ImageFolder {
    /// Lists `ROOT/<split>/<class>/` for the given classes (those of the
    /// training split, in label order). A class folder the training split
    /// lacks is refused; a split may lack some classes. `resize`, as
    /// (height, width), makes every image that size.
    pub fn open(
        root: &Path,
        split: Split,
        classes: &[String],
        resize: Option<(u32, u32)>,
    ) -> Result<Self> {
        let dir = root.join(split.name());
        if !dir.is_dir() {
            return Err(Error::format(
                &dir,
                "not found (an image tree needs train/ and test/)",
            ));
        }
        let (mut files, mut labels) = (Vec::new(), Vec::new());
        for name in sub_folders(&dir)? {
            let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
                Error::format(
                    dir.join(&name),
                    format!(
                        "is no class of the training split (its classes: {})",
                        classes.join(", ")
                    ),
                )
            })?;
            let found = image_files(&dir.join(&name))?;
            labels.extend(std::iter::repeat(label as i64).take(found.len()));
            files.extend(found);
        }
        let Some(first) = files.first() else {
            return Err(Error::format(&dir, "holds no PNG or JPEG image"));
        };
        let image = decode(first)?;
        let channels = if image.color().has_color() { 3 } else { 1 };
        let (h, w) = resize.unwrap_or((image.height(), image.width()));
        if h == 0 || w == 0 {
            return Err(Error::Config(format!("image size {h}x{w} has a zero side")));
        }
        Ok(ImageFolder {
            dir,
            classes: classes.to_vec(),
            files,
            labels,
            shape: [channels, i64::from(h), i64::from(w)],
            resize,
        })
    }

    /// The split's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image files, in sample order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Bytes the whole split takes decoded (float32 pixels).
    pub fn decoded_bytes(&self) -> u64 {
        let [c, h, w] = self.shape;
        self.files.len() as u64 * (c * h * w) as u64 * 4
    }

    /// Whether images are resized (else they must all have one size).
    pub fn resizes(&self) -> bool {
        self.resize.is_some()
    }

    /// Sample `i` as `C*H*W` floats in `[0, 1]`, channel-major, appended to `out`.
    fn read_into(&self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        let path = &self.files[i];
        let [c, h, w] = self.shape;
        let (h, w) = (h as u32, w as u32);
        let mut image = decode(path)?;
        if (image.height(), image.width()) != (h, w) {
            if self.resize.is_none() {
                return Err(Error::format(
                    path,
                    format!(
                        "is {}x{} (height x width) where the first image of {} is {h}x{w}: \
                         pass --image-size HxW to resize every image",
                        image.height(),
                        image.width(),
                        self.dir.display()
                    ),
                ));
            }
            image = image.resize_exact(w, h, FilterType::Triangle);
        }
        let (pixels, n) = match c {
            1 => (image.into_luma8().into_raw(), 1),
            _ => (image.into_rgb8().into_raw(), 3),
        };
        // Interleaved HWC bytes to planar CHW floats.
        for ch in 0..n {
            out.extend(
                pixels
                    .iter()
                    .skip(ch)
                    .step_by(n)
                    .map(|&b| f32::from(b) / 255.0),
            );
        }
        Ok(())
    }

    /// The whole split, decoded into memory.
    pub fn load(&self) -> Result<Dataset> {
        let all: Vec<i64> = (0..self.files.len() as i64).collect();
        let (images, labels) = self.gather(&all)?;
        Ok(Dataset {
            images,
            labels,
            classes: self.classes.clone(),
        })
    }

    /// What identifies the split's content cheaply: each file's path below
    /// the split folder, its length and its label (reading every byte of an
    /// ImageNet-size tree would take as long as an epoch).
    pub fn fingerprint(&self, hasher: &mut crc32fast::Hasher) -> Result<()> {
        for (file, label) in self.files.iter().zip(&self.labels) {
            let len = std::fs::metadata(file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?
                .len();
            let rel = file.strip_prefix(&self.dir).unwrap_or(file);
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update(&len.to_le_bytes());
            hasher.update(&label.to_le_bytes());
        }
        Ok(())
    }
}

impl BatchSource for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn input_shape(&self) -> [i64; 3] {
        self.shape
    }
    fn gather(&self, indices: &[i64]) -> Result<(Tensor, Tensor)> {
        let [c, h, w] = self.shape;
        let mut pixels = Vec::with_capacity(indices.len() * (c * h * w) as usize);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < self.files.len())
                .ok_or_else(|| {
                    Error::input(format!("sample {i} of {} requested", self.files.len()))
                })?;
            self.read_into(i, &mut pixels)?;
            labels.push(self.labels[i]);
        }
        let images = Tensor::f_from_slice(&pixels)?.f_reshape([indices.len() as i64, c, h, w])?;
        Ok((images, Tensor::f_from_slice(&labels)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    fn tree(sizes: &[(u32, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, &(w, h)) in sizes.iter().enumerate() {
            let class = ["cat", "dog"][i % 2];
            for split in ["train", "test"] {
                let p = dir.path().join(split).join(class).join(format!("{i}.png"));
                write_png(&p, w, h, [200, 100 * (i % 2) as u8, 0]);
            }
        }
        dir
    }

    #[test]
    fn classes_are_folder_names_and_pixels_are_planar() {
        let dir = tree(&[(3, 2), (3, 2), (3, 2)]);
        let classes = class_names(dir.path()).unwrap();
        assert_eq!(classes, ["cat", "dog"]);
        let split = ImageFolder::open(dir.path(), Split::Train, &classes, None).unwrap();
        assert_eq!(split.input_shape(), [3, 2, 3]);
        let d = split.load().unwrap();
        assert_eq!(d.labels_vec(), vec![0, 0, 1]);
        let red = d.images.double_value(&[0, 0, 1, 2]);
        let green = d.images.double_value(&[2, 1, 0, 0]);
        assert!((red - 200.0 / 255.0).abs() < 1e-6 && (green - 100.0 / 255.0).abs() < 1e-6);
        assert_eq!(d.images.double_value(&[0, 2, 0, 0]), 0.0);
    }

    #[test]
    fn mixed_sizes_are_refused_unless_resized() {
        let dir = tree(&[(4, 4), (4, 4), (6, 5)]);
        let classes = class_names(dir.path()).unwrap();
        let split = ImageFolder::open(dir.path(), Split::Test, &classes, None).unwrap();
        let e = split.load().unwrap_err().to_string();
        assert!(e.contains("is 5x6") && e.contains("--image-size"), "{e}");
        let split = ImageFolder::open(dir.path(), Split::Test, &classes, Some((2, 2))).unwrap();
        assert_eq!(split.load().unwrap().images.size(), vec![3, 3, 2, 2]);
    }

    #[test]
    fn a_test_class_the_training_split_lacks_is_refused() {
        let dir = tree(&[(2, 2), (2, 2)]);
        write_png(&dir.path().join("test/fox/a.png"), 2, 2, [1, 2, 3]);
        let classes = class_names(dir.path()).unwrap();
        let e = ImageFolder::open(dir.path(), Split::Test, &classes, None).unwrap_err();
        assert!(
            e.to_string().contains("no class of the training split"),
            "{e}"
        );
    }
}

use super::*;
use crate::plot::{render_png, render_svg};

fn names() -> Vec<String> {
    ["T-shirt/top", "Trouser", "Ankle boot"]
        .map(String::from)
        .to_vec()
}

fn sample_matrix() -> Vec<Vec<f64>> {
    vec![
        vec![0.0, 3.5, 120.0],
        vec![42.0, 0.0, 7.25],
        vec![f64::NAN, 15.0, 0.0],
    ]
}

/// Decodes a PNG into (width, height, RGB pixels).
fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .unwrap()
        .into_rgb8();
    (img.width(), img.height(), img.into_raw())
}

fn count(img: &(u32, u32, Vec<u8>), c: RGBColor) -> usize {
    img.2.chunks(3).filter(|p| *p == [c.0, c.1, c.2]).count()
}

/// The text of every `<text>` element of an SVG, with its font size.
fn svg_texts(svg: &str) -> Vec<(String, String)> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let size = t
                .split("font-size=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_string();
            let body = t
                .split('>')
                .nth(1)
                .unwrap_or("")
                .split('<')
                .next()
                .unwrap_or("");
            (size, body.trim().to_string())
        })
        .collect()
}

#[test]
fn bad_matrices_are_refused() {
    let l = names();
    let unit = "size";
    assert!(Heatmap::new("t", &[], &[], Scale::Sequential, unit).is_err());
    let ragged = vec![vec![0.0, 1.0], vec![1.0]];
    assert!(Heatmap::new("t", &ragged, &l[..2], Scale::Sequential, unit).is_err());
    let m = sample_matrix();
    let e = match Heatmap::new("t", &m, &l[..2], Scale::Sequential, unit) {
        Err(e) => e,
        Ok(_) => panic!("two labels for three rows accepted"),
    };
    assert!(e.to_string().contains("2 labels for a 3x3 matrix"), "{e}");
}

#[test]
fn cells_take_the_scale_colours_and_the_diagonal_is_grey() {
    let (m, l) = (sample_matrix(), names());
    let h = Heatmap::new("t", &m, &l, Scale::Sequential, "size").unwrap();
    assert_eq!(h.cell(0, 0), (GREY, String::new()));
    assert_eq!(h.cell(2, 0), (GREY, "n/a".into()));
    assert_eq!(h.cell(0, 1).0, interpolate(&VIRIDIS, 0.0));
    assert_eq!(h.cell(0, 2), (interpolate(&VIRIDIS, 1.0), "120".into()));
    assert_eq!(h.cell(1, 2).1, "7.2");
    let img = decode(&render_png(&h).unwrap());
    assert_eq!((img.0, img.1), h.size());
    // The largest cell is drawn in full in the brightest colour.
    assert!(count(&img, interpolate(&VIRIDIS, 1.0)) > 30 * 30);
}

#[test]
fn differences_are_signed_around_white() {
    let m = vec![vec![0.0, -2.0], vec![4.0, 0.0]];
    let l = ["a".to_string(), "b".to_string()];
    let h = Heatmap::new("after - before", &m, &l, Scale::Diverging, "change").unwrap();
    assert_eq!(h.cell(1, 0), (interpolate(&RDBU, 1.0), "+4.0".into()));
    assert_eq!(h.cell(0, 1), (interpolate(&RDBU, 0.25), "-2.0".into()));
    assert_eq!(h.colour(0.0), interpolate(&RDBU, 0.5));
}

#[test]
fn the_svg_names_classes_in_full_axes_and_unit_with_one_cell_font_size() {
    let (m, l) = (sample_matrix(), names());
    let h = Heatmap::new("distance before", &m, &l, Scale::Sequential, "trigger size").unwrap();
    let texts = svg_texts(&render_svg(&h).unwrap());
    let has = |s: &str| texts.iter().any(|(_, t)| t == s);
    for want in [
        "T-shirt/top",
        "Ankle boot",
        "source class",
        "target class",
        "trigger size",
        "distance before",
    ] {
        assert!(has(want), "no text '{want}' in {texts:?}");
    }
    let values: Vec<&(String, String)> = texts
        .iter()
        .filter(|(_, t)| ["3.5", "120", "42", "7.2", "15", "n/a"].contains(&t.as_str()))
        .collect();
    assert!(values.len() >= 6, "{texts:?}");
    assert!(values.iter().all(|(s, _)| *s == values[0].0), "{values:?}");
}

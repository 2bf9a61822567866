use super::*;
use crate::plot::font::{glyph, GLYPHS};

fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class{i}")).collect()
}

fn spec<'a>(labels: &'a [String], scale: Scale) -> HeatmapSpec<'a> {
    HeatmapSpec {
        title: "Class distance",
        labels,
        scale,
        cell_px: 40,
    }
}

/// Decodes an RGB8 PNG into (width, height, pixels).
fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(bytes);
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn pixel(img: &(u32, u32, Vec<u8>), x: i64, y: i64) -> [u8; 3] {
    let i = ((y * i64::from(img.0) + x) * 3) as usize;
    [img.2[i], img.2[i + 1], img.2[i + 2]]
}

fn layout_of(matrix: &[Vec<f64>], spec: &HeatmapSpec) -> Layout {
    let l: Vec<String> = spec.labels.iter().map(|l| truncate_label(l)).collect();
    let range = Range::of(matrix, spec.scale);
    Layout::new(matrix.len(), &l, spec.title, range, spec.cell_px)
}

/// A pixel near the top-left corner of a cell, away from its text.
fn cell_corner(img: &(u32, u32, Vec<u8>), lay: &Layout, r: usize, c: usize) -> [u8; 3] {
    let (x, y) = lay.cell_origin(r, c);
    pixel(img, x + 1, y + 1)
}

fn sample_matrix() -> Vec<Vec<f64>> {
    vec![
        vec![0.0, 3.5, 120.0],
        vec![42.0, 0.0, 7.25],
        vec![f64::NAN, 15.0, 0.0],
    ]
}

#[test]
fn png_has_layout_dimensions() {
    let m = sample_matrix();
    let l = labels(3);
    let s = spec(&l, Scale::Sequential);
    let img = decode(&render_png(&m, &s).unwrap());
    let lay = layout_of(&m, &s);
    assert_eq!(
        (i64::from(img.0), i64::from(img.1)),
        (lay.width, lay.height)
    );
    // Grid plus labels, title and colour bar.
    assert!(
        img.0 > 3 * 40 + 40 && img.1 > 3 * 40 + 20,
        "{}x{}",
        img.0,
        img.1
    );
    // Background of the top-left corner is white.
    assert_eq!(pixel(&img, 0, 0), WHITE);
}

#[test]
fn tiny_cells_and_single_class_render() {
    let l = labels(4);
    let m = vec![vec![1.0; 4]; 4];
    let s = HeatmapSpec {
        title: "",
        labels: &l,
        scale: Scale::Sequential,
        cell_px: 1,
    };
    let img = decode(&render_png(&m, &s).unwrap());
    let lay = layout_of(&m, &s);
    assert_eq!(
        (i64::from(img.0), i64::from(img.1)),
        (lay.width, lay.height)
    );

    let one = vec!["only".to_string()];
    let s = HeatmapSpec {
        title: "t",
        labels: &one,
        scale: Scale::Diverging,
        cell_px: 30,
    };
    let m = vec![vec![0.0]];
    let img = decode(&render_png(&m, &s).unwrap());
    let lay = layout_of(&m, &s);
    assert_eq!(cell_corner(&img, &lay, 0, 0), GREY);
}

#[test]
fn sequential_max_is_brighter_than_min() {
    let m = sample_matrix();
    let l = labels(3);
    let s = spec(&l, Scale::Sequential);
    let img = decode(&render_png(&m, &s).unwrap());
    let lay = layout_of(&m, &s);
    let min = cell_corner(&img, &lay, 0, 1); // 3.5
    let max = cell_corner(&img, &lay, 0, 2); // 120
    let mid = cell_corner(&img, &lay, 1, 0); // 42
    assert!(luminance(max) > luminance(mid), "{max:?} vs {mid:?}");
    assert!(luminance(mid) > luminance(min), "{mid:?} vs {min:?}");
    assert_eq!(min, interpolate(&VIRIDIS, 0.0));
    assert_eq!(max, interpolate(&VIRIDIS, 1.0));
}

#[test]
fn diverging_signs_are_red_and_blue() {
    let m = vec![
        vec![0.0, 5.0, -5.0],
        vec![-2.0, 0.0, 12.0],
        vec![0.0, -12.0, 0.0],
    ];
    let l = labels(3);
    let s = spec(&l, Scale::Diverging);
    let img = decode(&render_png(&m, &s).unwrap());
    let lay = layout_of(&m, &s);
    for (r, c) in [(0, 1), (1, 2)] {
        let p = cell_corner(&img, &lay, r, c);
        assert!(p[0] > p[2] + 20, "positive cell ({r},{c}) {p:?}");
    }
    for (r, c) in [(0, 2), (1, 0), (2, 1)] {
        let p = cell_corner(&img, &lay, r, c);
        assert!(p[2] > p[0] + 20, "negative cell ({r},{c}) {p:?}");
    }
    // Zero is (near) white.
    let z = cell_corner(&img, &lay, 2, 0);
    assert!(z.iter().all(|&v| v > 240), "{z:?}");
    // The colour bar is red at the top and blue at the bottom.
    let grid = 3 * lay.cell;
    let top = pixel(&img, lay.bar_x + 1, lay.grid_y);
    let bottom = pixel(&img, lay.bar_x + 1, lay.grid_y + grid - 1);
    assert!(
        top[0] > top[2] && bottom[2] > bottom[0],
        "{top:?} {bottom:?}"
    );
}

#[test]
fn diagonal_and_non_finite_cells_are_grey() {
    let m = sample_matrix();
    let l = labels(3);
    for scale in [Scale::Sequential, Scale::Diverging] {
        let s = spec(&l, scale);
        let img = decode(&render_png(&m, &s).unwrap());
        let lay = layout_of(&m, &s);
        for i in 0..3 {
            assert_eq!(cell_corner(&img, &lay, i, i), GREY);
            let (x, y) = lay.cell_origin(i, i);
            // No text on the diagonal.
            assert_eq!(pixel(&img, x + 20, y + 20), GREY);
        }
        assert_eq!(cell_corner(&img, &lay, 2, 0), GREY, "NaN cell");
    }
}

#[test]
fn cell_text_contrasts_with_background() {
    let m = sample_matrix();
    let l = labels(3);
    let s = spec(&l, Scale::Sequential);
    let img = decode(&render_png(&m, &s).unwrap());
    let lay = layout_of(&m, &s);
    let count = |r: usize, c: usize, colour: [u8; 3]| {
        let (x, y) = lay.cell_origin(r, c);
        let mut k = 0;
        for yy in y..y + lay.cell {
            for xx in x..x + lay.cell {
                k += usize::from(pixel(&img, xx, yy) == colour);
            }
        }
        k
    };
    // Dark minimum cell: white text; bright maximum cell: black text.
    assert!(count(0, 1, WHITE) > 10);
    assert!(count(0, 2, BLACK) > 10);
}

#[test]
fn value_formatting() {
    assert_eq!(fmt_value(3.54, false), "3.5");
    assert_eq!(fmt_value(-9.94, false), "-9.9");
    assert_eq!(fmt_value(123.6, false), "124");
    assert_eq!(fmt_value(-0.01, false), "0.0");
    assert_eq!(fmt_value(2.0, true), "+2.0");
    assert_eq!(fmt_value(0.0, true), "0.0");
    assert_eq!(fmt_value(f64::NAN, false), "NaN");
    assert_eq!(truncate_label("automobile"), "automobi");
    for c in "0123456789-.%+ /abcxyzABCXYZ".chars() {
        assert!(
            GLYPHS.iter().any(|(g, _)| *g == c.to_ascii_uppercase()),
            "{c}"
        );
    }
    assert_eq!(glyph('~'), glyph('?'));
}

#[test]
fn bad_inputs_are_rejected() {
    let l3 = labels(3);
    let s = spec(&l3, Scale::Sequential);
    let is_input = |r: Result<Vec<u8>>| matches!(r, Err(Error::Input(_)));

    assert!(is_input(render_png(&[], &spec(&[], Scale::Sequential))));
    let ragged = vec![vec![0.0; 3], vec![0.0; 2], vec![0.0; 3]];
    assert!(is_input(render_png(&ragged, &s)));
    let wide = vec![vec![0.0; 4]; 3];
    assert!(is_input(render_png(&wide, &s)));
    let l2 = labels(2);
    assert!(is_input(render_png(
        &sample_matrix(),
        &spec(&l2, Scale::Sequential)
    )));
    let zero = HeatmapSpec { cell_px: 0, ..s };
    assert!(is_input(render_png(&sample_matrix(), &zero)));
    let huge = HeatmapSpec {
        cell_px: 100_000,
        ..s
    };
    assert!(is_input(render_png(&sample_matrix(), &huge)));
    let msg = render_png(&ragged, &s).unwrap_err().to_string();
    assert!(msg.contains("not square"), "{msg}");
}

#[test]
fn write_png_writes_file_and_reports_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heat.png");
    let l = labels(3);
    let s = spec(&l, Scale::Diverging);
    write_png(&path, &sample_matrix(), &s).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, render_png(&sample_matrix(), &s).unwrap());

    let bad = dir.path().join("missing").join("heat.png");
    match write_png(&bad, &sample_matrix(), &s) {
        Err(Error::Io { context, .. }) => {
            assert!(context.starts_with("writing heatmap "), "{context}");
            assert!(context.contains("missing"), "{context}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

//! Image folders in torchvision's `ImageFolder` layout: ROOT/<class>/<image>.png|.jpg|.jpeg.
//! Classes are the sub-folders of ROOT sorted by name and numbered from 0 in that order; the
//! images of a class are found as `sorted(os.walk(class_dir))` lists them (nested folders too).
//! Differences from torchvision: hidden entries (names starting with '.', e.g. macOS `._x.png`)
//! are skipped, and only PNG and JPEG files are read.
//!
//! Each image becomes float32 CHW in [0, 1] of a fixed height×width, like
//! `Compose([Resize(s), CenterCrop((height, width)), ToTensor()])` with `s` the smallest size that
//! covers the crop; an image that already has the target size is passed through unresampled.
//! Luma uses the image crate's Rec. 709 weights (PIL's `convert("L")` uses Rec. 601), so colour
//! images read as 1 channel differ from torchvision's `Grayscale()` by a few levels.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use graph_passes::onnx::io_reason;
use image::imageops::FilterType;
use image::{ImageBuffer, Pixel};

/// Deepest folder nesting followed inside a class folder (a guard against symlink loops).
const MAX_DEPTH: usize = 32;

/// Resized images larger than this many pixels are refused (a 1×10000 strip cropped to 224×224
/// would otherwise need gigabytes).
const MAX_RESIZED_PIXELS: u64 = 1 << 28;

/// The files of an ImageFolder: classes are the sorted sub-folder names (torchvision's order),
/// files sorted within each class.
#[derive(Clone, Debug)]
pub struct Scan {
    /// Image paths, class by class.
    pub files: Vec<PathBuf>,
    /// Class index of each file, [N] int64.
    pub y: Vec<i64>,
    /// Class folder names; `classes[i]` is class `i` (torchvision's `classes`).
    pub classes: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The non-hidden entries of `dir` as (path, is a folder), sorted by name in byte order.
fn entries(dir: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let list_error = |e: std::io::Error| anyhow!("{}: cannot list the folder: {}", dir.display(), io_reason(&e));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as os.walk(followlinks=True) in torchvision does.
        let is_dir = path.is_dir();
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, p, d)| (p, d)).collect())
}

/// The images under one class folder in torchvision's order: `sorted(os.walk(dir))` orders the
/// folders by their full path string, then the file names are sorted within each folder.
fn class_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            bail!("{}: folders nested over {MAX_DEPTH} deep (a symlink loop?); flatten the class folder", d.display());
        }
        let mut files = Vec::new();
        for (p, is_dir) in entries(&d)? {
            if is_dir {
                pending.push((p, depth + 1));
            } else if is_image(&p) {
                files.push(p);
            }
        }
        folders.push((d, files));
    }
    folders.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    Ok(folders.into_iter().flat_map(|(_, f)| f).collect())
}

/// Lists an image folder: ROOT's sub-folders (sorted by name, byte order) are the classes, and
/// every .png/.jpg/.jpeg (any case) under one is a sample of it; other files are ignored.
///
/// Errors: ROOT is not a folder or cannot be listed; no class folders; a class folder without
/// images (torchvision raises on it too).
pub fn scan(root: &Path) -> Result<Scan> {
    if !root.is_dir() {
        bail!("{}: not a folder; an image folder holds ROOT/<class>/<image>.png", root.display());
    }
    let mut scan = Scan { files: Vec::new(), y: Vec::new(), classes: Vec::new() };
    for (dir, is_dir) in entries(root)? {
        if !is_dir {
            continue;
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let found = class_files(&dir)?;
        if found.is_empty() {
            bail!(
                "{}: class folder '{name}' holds no .png/.jpg/.jpeg image; add images or remove the folder",
                dir.display()
            );
        }
        scan.y.extend(std::iter::repeat_n(scan.classes.len() as i64, found.len()));
        scan.files.extend(found);
        scan.classes.push(name);
    }
    if scan.classes.is_empty() {
        bail!(
            "{}: no class folders (ROOT/<class>/<image>.png); put each class's images in a sub-folder named after it",
            root.display()
        );
    }
    Ok(scan)
}

/// The target size as u32, checked.
fn target_size(channels: usize, height: usize, width: usize) -> Result<(u32, u32)> {
    if channels != 1 && channels != 3 {
        bail!("images are read with 1 (grayscale) or 3 (RGB) channels, not {channels}; pass 1 or 3");
    }
    match (u32::try_from(height), u32::try_from(width)) {
        (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => bail!("image size {height}×{width}: height and width must be positive and below 2³²"),
    }
}

/// Python's `int(round(d / 2.0))`: halves round to even (round(0.5) = 0, round(1.5) = 2), as
/// torchvision's center_crop computes the crop offset.
fn center_offset(d: u32) -> u32 {
    let q = d / 2;
    if d % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// `img` scaled (bilinear) so that it covers th×tw, then center-cropped to it: HWC bytes.
fn fit<P>(path: &Path, img: ImageBuffer<P, Vec<u8>>, th: u32, tw: u32) -> Result<Vec<u8>>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (w, h) = img.dimensions();
    if (h, w) == (th, tw) {
        return Ok(img.into_raw());
    }
    if h == 0 || w == 0 {
        bail!("{}: the image is {w}×{h} pixels (empty); remove or replace the file", path.display());
    }
    // scale = max(th/h, tw/w): the shorter side (relative to the crop) lands on its target.
    let scale = (th as f64 / h as f64).max(tw as f64 / w as f64);
    let nh = ((h as f64 * scale).round() as u32).max(th);
    let nw = ((w as f64 * scale).round() as u32).max(tw);
    if nh as u64 * nw as u64 > MAX_RESIZED_PIXELS {
        bail!(
            "{}: a {w}×{h} image would be resized to {nw}×{nh} to cover {tw}×{th}; crop it closer to that aspect ratio first",
            path.display()
        );
    }
    // resize copies without resampling when (nw, nh) already is the size.
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    let c = P::CHANNEL_COUNT as usize;
    let (top, left) = (center_offset(nh - th) as usize, center_offset(nw - tw) as usize);
    let raw = resized.into_raw();
    let row = tw as usize * c;
    let mut out = Vec::with_capacity(th as usize * row);
    for y in top..top + th as usize {
        let start = (y * nw as usize + left) * c;
        out.extend_from_slice(&raw[start..start + row]);
    }
    Ok(out)
}

/// Decodes one image to float32 CHW in [0, 1] (channels 1 = luma, 3 = RGB), [channels × height ×
/// width]: an image of exactly height×width keeps its pixels; any other is resized (bilinear) so
/// that it covers height×width with its aspect ratio kept, then center-cropped (torchvision's
/// `Resize` + `CenterCrop`, offsets rounded as torchvision rounds them).
///
/// Errors: channels other than 1 or 3, a zero size, an unreadable file, or one that does not
/// decode as PNG/JPEG ("<path>: cannot decode the image (…); remove or replace the file").
pub fn decode(path: &Path, channels: usize, height: usize, width: usize) -> Result<Vec<f32>> {
    let (th, tw) = target_size(channels, height, width)?;
    let shown = path.display();
    let read_error = |e: std::io::Error| anyhow!("{shown}: cannot read: {}", io_reason(&e));
    let img = image::io::Reader::open(path)
        .map_err(read_error)?
        .with_guessed_format()
        .map_err(read_error)?
        .decode()
        .map_err(|e| {
            let reason = e.to_string().replace(['\n', '\r'], " ");
            anyhow!("{shown}: cannot decode the image ({reason}); remove or replace the file")
        })?;
    let hwc = match channels {
        1 => fit(path, img.to_luma8(), th, tw)?,
        _ => fit(path, img.to_rgb8(), th, tw)?,
    };
    let plane = height * width;
    let mut chw = vec![0f32; channels * plane];
    for (i, px) in hwc.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * plane + i] = v as f32 / 255.0;
        }
    }
    Ok(chw)
}

/// Scans ROOT and decodes every file (see [`scan`], [`decode`]) on `threads` workers (at least
/// one), each decoding a contiguous chunk of the file list. Returns x [N × channels × height ×
/// width] float32 in scan order, and the scan (labels y [N] int64, class names).
///
/// Errors: those of `scan`; else the decode error of the bad file with the lowest index.
pub fn load(root: &Path, channels: usize, height: usize, width: usize, threads: usize) -> Result<(Vec<f32>, Scan)> {
    target_size(channels, height, width)?;
    let scan = scan(root)?;
    let per = channels * height * width;
    let n = scan.files.len();
    let chunk = n.div_ceil(threads.clamp(1, n.max(1))).max(1);
    let mut x = vec![0f32; n * per];
    let outcomes: Vec<Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = x
            .chunks_mut(chunk * per)
            .zip(scan.files.chunks(chunk))
            .map(|(out, files)| {
                s.spawn(move || -> Result<()> {
                    for (o, f) in out.chunks_mut(per).zip(files) {
                        o.copy_from_slice(&decode(f, channels, height, width)?);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("an image-decoding thread panicked (a bug in onnxsam)"))))
            .collect()
    });
    // Chunks are contiguous and in order, so the first failing worker holds the first bad file.
    for outcome in outcomes {
        outcome?;
    }
    Ok((x, scan))
}

/// Reads the header of every file (format and dimensions, not the pixels) on `threads` workers:
/// the check a folder decoded batch by batch gets before training. Errors: the first unreadable
/// or unrecognised file (by index), named.
pub fn check_headers(files: &[std::path::PathBuf], threads: usize) -> Result<()> {
    let n = files.len();
    let chunk = n.div_ceil(threads.clamp(1, n.max(1))).max(1);
    let outcomes: Vec<Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|fs| {
                s.spawn(move || -> Result<()> {
                    for f in fs {
                        let shown = f.display();
                        let read_error = |e: std::io::Error| anyhow!("{shown}: cannot read: {}", io_reason(&e));
                        image::io::Reader::open(f)
                            .map_err(read_error)?
                            .with_guessed_format()
                            .map_err(read_error)?
                            .into_dimensions()
                            .map_err(|e| {
                                let reason = e.to_string().replace(['\n', '\r'], " ");
                                anyhow!("{shown}: cannot decode the image ({reason}); remove or replace the file")
                            })?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow!("an image-checking thread panicked (a bug in onnxsam)"))))
            .collect()
    });
    for outcome in outcomes {
        outcome?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn gray(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)])).save(path).unwrap();
    }

    fn rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y))).save(path).unwrap();
    }

    fn bytes(v: &[u8]) -> Vec<f32> {
        v.iter().map(|&b| b as f32 / 255.0).collect()
    }

    #[test]
    fn scan_orders_classes_by_byte_order_and_skips_hidden_and_non_images() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for class in ["b", "a", "B", ".hidden"] {
            gray(&r.join(class).join("0.png"), 2, 2, |_, _| 0);
        }
        gray(&r.join("a/10.PNG"), 2, 2, |_, _| 0);
        gray(&r.join("a/2.png"), 2, 2, |_, _| 0);
        gray(&r.join("a/._2.png"), 2, 2, |_, _| 0);
        std::fs::write(r.join("a/notes.txt"), "not an image").unwrap();
        std::fs::write(r.join("README.txt"), "not a class").unwrap();
        let s = scan(r).unwrap();
        assert_eq!(s.classes, ["B", "a", "b"]);
        assert_eq!(s.y, [0, 1, 1, 1, 2]);
        let names: Vec<String> =
            s.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["0.png", "0.png", "10.PNG", "2.png", "0.png"]);
    }

    #[test]
    fn scan_lists_nested_folders_like_sorted_os_walk() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("c");
        gray(&c.join("z.png"), 1, 1, |_, _| 0);
        gray(&c.join("sub/a.png"), 1, 1, |_, _| 0);
        // "c" < "c/sub": the class folder's own files come first.
        let s = scan(d.path()).unwrap();
        assert_eq!(s.files, [c.join("z.png"), c.join("sub/a.png")]);
    }

    #[test]
    fn scan_errors_on_a_class_folder_without_images() {
        let d = tempfile::tempdir().unwrap();
        gray(&d.path().join("cat/0.png"), 1, 1, |_, _| 0);
        std::fs::create_dir_all(d.path().join("dog")).unwrap();
        std::fs::write(d.path().join("dog/readme.txt"), "x").unwrap();
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("'dog'") && e.contains("no .png"), "{e}");
    }

    #[test]
    fn scan_errors_without_class_folders() {
        let d = tempfile::tempdir().unwrap();
        gray(&d.path().join("0.png"), 1, 1, |_, _| 0);
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("no class folders (ROOT/<class>/<image>.png)"), "{e}");
    }

    #[test]
    fn decode_keeps_exact_pixels_when_already_the_target_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.png");
        gray(&p, 3, 2, |x, y| (10 * x + 100 * y) as u8);
        assert_eq!(decode(&p, 1, 2, 3).unwrap(), bytes(&[0, 10, 20, 100, 110, 120]));
        let q = d.path().join("c.png");
        rgb(&q, 2, 1, |x, _| [x as u8, 50 + x as u8, 200 + x as u8]);
        // CHW: the red plane, then green, then blue.
        assert_eq!(decode(&q, 3, 1, 2).unwrap(), bytes(&[0, 1, 50, 51, 200, 201]));
    }

    #[test]
    fn decode_crops_without_resampling_when_one_side_already_fits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wide.png");
        // 7 wide, 2 high, crop 2×4: 3 spare columns, offset round(1.5) = 2.
        gray(&p, 7, 2, |x, y| (x + 10 * y) as u8);
        assert_eq!(decode(&p, 1, 2, 4).unwrap(), bytes(&[2, 3, 4, 5, 12, 13, 14, 15]));
        // 5 wide: 1 spare column, offset round(0.5) = 0.
        gray(&p, 5, 2, |x, y| (x + 10 * y) as u8);
        assert_eq!(decode(&p, 1, 2, 4).unwrap(), bytes(&[0, 1, 2, 3, 10, 11, 12, 13]));
    }

    #[test]
    fn decode_resizes_the_shorter_side_then_center_crops() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.png");
        rgb(&p, 10, 6, |_, _| [30, 60, 90]);
        let v = decode(&p, 3, 4, 4).unwrap();
        assert_eq!(v.len(), 3 * 4 * 4);
        // A flat image stays flat under bilinear resampling.
        assert_eq!(&v[..16], &bytes(&[30; 16])[..]);
        assert_eq!(&v[32..], &bytes(&[90; 16])[..]);
        let small = decode(&p, 1, 20, 12).unwrap();
        assert_eq!(small.len(), 20 * 12);
    }

    #[test]
    fn decode_of_a_corrupt_png_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("broken.png");
        let junk: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&p, junk).unwrap();
        let e = decode(&p, 1, 28, 28).unwrap_err().to_string();
        assert!(e.contains("broken.png") && e.contains("cannot decode the image") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn decode_rejects_a_channel_count_other_than_1_or_3() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.png");
        gray(&p, 2, 2, |_, _| 0);
        assert!(decode(&p, 4, 2, 2).unwrap_err().to_string().contains("1 (grayscale) or 3 (RGB)"));
    }

    #[test]
    fn load_decodes_every_file_in_scan_order() {
        let d = tempfile::tempdir().unwrap();
        for (class, v) in [("0", 10u8), ("1", 20)] {
            for i in 0..3u8 {
                gray(&d.path().join(class).join(format!("{i}.png")), 2, 2, |_, _| v + i);
            }
        }
        let (x, s) = load(d.path(), 1, 2, 2, 4).unwrap();
        assert_eq!(s.y, [0, 0, 0, 1, 1, 1]);
        let firsts: Vec<f32> = x.chunks(4).map(|c| c[0]).collect();
        assert_eq!(firsts, bytes(&[10, 11, 12, 20, 21, 22]));
    }

    #[test]
    fn load_reports_the_first_bad_file_by_index() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..4 {
            gray(&d.path().join(format!("a/{i}.png")), 2, 2, |_, _| 0);
        }
        std::fs::create_dir_all(d.path().join("b")).unwrap();
        std::fs::write(d.path().join("b/bad1.png"), b"not a png").unwrap();
        std::fs::write(d.path().join("b/bad2.png"), b"not a png").unwrap();
        for threads in [1, 2, 3, 6] {
            let e = load(d.path(), 1, 2, 2, threads).unwrap_err().to_string();
            assert!(e.contains("bad1.png"), "{threads} threads: {e}");
        }
    }
}

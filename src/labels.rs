//! Where each class sits in a batch or dataset: the one label filter every
//! floor uses.

/// Positions (as tensor indices) of the samples labelled `class`.
pub fn positions_of(labels: &[i64], class: usize) -> Vec<i64> {
    positions_where(labels, |l| l == class as i64)
}

/// Positions of the samples not labelled `class`.
pub fn positions_except(labels: &[i64], class: usize) -> Vec<i64> {
    positions_where(labels, |l| l != class as i64)
}

fn positions_where(labels: &[i64], keep: impl Fn(i64) -> bool) -> Vec<i64> {
    (0..labels.len() as i64)
        .filter(|&i| keep(labels[i as usize]))
        .collect()
}

/// For each class, the positions of its first `limit` samples.
pub fn per_class_indices(labels: &[i64], num_classes: usize, limit: usize) -> Vec<Vec<i64>> {
    let mut out = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(v) = usize::try_from(l).ok().and_then(|l| out.get_mut(l)) {
            if v.len() < limit {
                v.push(i as i64);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_indices_caps_each_class() {
        let idx = per_class_indices(&[0, 1, 0, 0, 2, 1], 3, 2);
        assert_eq!(idx, vec![vec![0, 2], vec![1, 5], vec![4]]);
    }

    #[test]
    fn positions_split_a_batch_by_class() {
        let labels = [2, 0, 2, 1];
        assert_eq!(positions_of(&labels, 2), vec![0, 2]);
        assert_eq!(positions_except(&labels, 2), vec![1, 3]);
        assert!(positions_of(&labels, 5).is_empty());
        assert_eq!(per_class_indices(&[-1, 0, 7], 2, 9), vec![vec![1], vec![]]);
    }
}

//! Learning-rate and ρ schedules, as functions of the step (so a resumed run gets the same values).
use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// lr₀·½(1 + cos(π·t/T))
    Cosine,
    /// multiply by `factor` at each fraction of training
    Step {
        at: Vec<f64>,
        factor: f64,
    },
    /// linear warm-up over `steps`, then `then` over the remaining steps
    Warmup {
        steps: usize,
        then: Box<Schedule>,
    },
}

impl std::str::FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Schedule> {
        if s == "constant" {
            return Ok(Schedule::Constant);
        }
        if s == "cosine" {
            return Ok(Schedule::Cosine);
        }
        if let Some(rest) = s.strip_prefix("step:") {
            let (list, factor) = match rest.split_once('@') {
                Some((l, f)) => {
                    (l, f.parse::<f64>().map_err(|_| anyhow::anyhow!("--lr-schedule {s}: bad factor '{f}'"))?)
                }
                None => (rest, 0.2),
            };
            let at = list
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| anyhow::anyhow!("--lr-schedule {s}: expected fractions like step:0.3,0.6,0.8"))?;
            if at.iter().any(|f| !(0.0..=1.0).contains(f)) {
                bail!("--lr-schedule {s}: the fractions must lie in [0, 1]");
            }
            return Ok(Schedule::Step { at, factor });
        }
        if let Some(rest) = s.strip_prefix("warmup:") {
            let (k, then) = rest.split_once(',').unwrap_or((rest, "constant"));
            let steps =
                k.parse().map_err(|_| anyhow::anyhow!("--lr-schedule {s}: expected warmup:STEPS[,SCHEDULE]"))?;
            return Ok(Schedule::Warmup { steps, then: Box::new(then.parse()?) });
        }
        bail!("unknown schedule '{s}' (constant, cosine, step:0.3,0.6,0.8[@factor], warmup:STEPS[,SCHEDULE])")
    }
}

impl Schedule {
    /// The multiplier of the base value at step `t` of `total`.
    pub fn factor(&self, t: usize, total: usize) -> f64 {
        let total = total.max(1);
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos()),
            Schedule::Step { at, factor } => {
                let frac = t as f64 / total as f64;
                factor.powi(at.iter().filter(|&&a| frac >= a).count() as i32)
            }
            Schedule::Warmup { steps, then } => {
                if t < *steps {
                    (t + 1) as f64 / *steps as f64
                } else {
                    then.factor(t - steps, total.saturating_sub(*steps))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_their_formulas() {
        let c: Schedule = "cosine".parse().unwrap();
        assert!((c.factor(0, 100) - 1.0).abs() < 1e-12);
        assert!((c.factor(50, 100) - 0.5).abs() < 1e-12);
        let s: Schedule = "step:0.3,0.6,0.8".parse().unwrap();
        assert_eq!(s.factor(29, 100), 1.0);
        assert!((s.factor(30, 100) - 0.2).abs() < 1e-12);
        assert!((s.factor(85, 100) - 0.008).abs() < 1e-12);
        let w: Schedule = "warmup:10,cosine".parse().unwrap();
        assert!((w.factor(0, 110) - 0.1).abs() < 1e-12);
        assert!((w.factor(10, 110) - 1.0).abs() < 1e-12);
        assert!("linear".parse::<Schedule>().is_err());
    }
}

//! The OCS download schedule (pure): a period is `period_length` cycles; in cycle `i` a
//! package takes one step (a fragment, or its installation) when `i` is a multiple of its
//! priority; priority 0 packages go first and alone, every cycle, until they are done.
//! Latencies are slept by the caller between steps, cycles and periods.

/// The packages that take a step in cycle `cycle` (1-based), in the order given.
pub fn cycle(jobs: &[(String, u8)], cycle: u64) -> Vec<&str> {
    let urgent: Vec<&str> = jobs
        .iter()
        .filter(|(_, priority)| *priority == 0)
        .map(|(id, _)| id.as_str())
        .collect();
    if !urgent.is_empty() {
        return urgent;
    }
    jobs.iter()
        .filter(|(_, priority)| cycle.is_multiple_of(u64::from(*priority)))
        .map(|(id, _)| id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(list: &[(&str, u8)]) -> Vec<(String, u8)> {
        list.iter().map(|(id, p)| (id.to_string(), *p)).collect()
    }

    #[test]
    fn a_package_steps_in_cycles_that_are_multiples_of_its_priority() {
        let list = jobs(&[("fast", 1), ("normal", 5)]);
        let steps: Vec<usize> = (1..=10)
            .map(|i| cycle(&list, i).iter().filter(|id| **id == "normal").count())
            .collect();
        assert_eq!(steps, [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(cycle(&list, 3), ["fast"]);
    }

    #[test]
    fn priority_zero_goes_first_and_alone() {
        let list = jobs(&[("normal", 1), ("urgent", 0)]);
        assert_eq!(cycle(&list, 1), ["urgent"]);
        assert_eq!(cycle(&list, 7), ["urgent"]);
    }
}

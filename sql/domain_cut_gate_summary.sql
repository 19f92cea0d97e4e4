-- Per domain of a gated cut: eligible documents gated out and passing the gate.
SELECT
    domain,
    count(*) FILTER (WHERE excluded_reason IS NULL AND gated_out) AS gated_out,
    count(*) FILTER (WHERE excluded_reason IS NULL AND NOT gated_out) AS gate_passed
FROM domain_cut
GROUP BY domain
ORDER BY domain

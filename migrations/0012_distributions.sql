-- Per-neuron activation distributions (issue 24): the histogram of the per-image activation (the
-- spatial maximum) over the whole dataset, streamed in pass 1 on fixed log-linear buckets.
CREATE TABLE activation_histograms (
    neuron_id INTEGER PRIMARY KEY,
    n_images BIGINT,
    density DOUBLE,
    share_zero DOUBLE,
    edges DOUBLE[],
    counts BIGINT[],
    bucket_values DOUBLE[],
    bucket_counts BIGINT[]
);
COMMENT ON TABLE activation_histograms IS 'The distribution of each unit''s per-image activation (its spatial maximum) over every image of the dataset, from pass 1. Made of fixed log-linear buckets (8 per octave, from the float32 bits; see neuronindex.stats.hist_buckets) that shards add up exactly; edges/counts re-bin them into equal bins for plots.';
COMMENT ON COLUMN activation_histograms.neuron_id IS 'neurons.id.';
COMMENT ON COLUMN activation_histograms.n_images IS 'Images counted.';
COMMENT ON COLUMN activation_histograms.density IS 'Activation density: share of images where the unit fires (activation > 0).';
COMMENT ON COLUMN activation_histograms.share_zero IS 'Share of images whose activation is exactly 0 (a rectified unit that does not fire).';
COMMENT ON COLUMN activation_histograms.edges IS 'Bin edges (hist_bins + 1 values) from the lowest activation (0 when some are 0) to a_max; a bucket falls whole into the bin of its middle value, so edges are exact to 6.1% of their value.';
COMMENT ON COLUMN activation_histograms.counts IS 'Images per bin (hist_bins values).';
COMMENT ON COLUMN activation_histograms.bucket_values IS 'The non-empty log-linear buckets: each one''s middle value (geometric; 0 for exact zero).';
COMMENT ON COLUMN activation_histograms.bucket_counts IS 'Images per non-empty bucket (quantiles to 6.1%: cumulative sums of these).';

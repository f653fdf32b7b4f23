"""Science: computations from arrays (statistics, Neuron Features, selectivity indexes, colour names,
directions, hierarchies, optimisation). Never opens an index; imports nets and the base modules."""

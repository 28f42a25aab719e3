"""Learning from outcomes: the Beta posteriors of offers, Thompson sampling, learned arbitration (P·C·V·L),
recorded outcomes and the decision log's candidates and propensities."""

"""Tools on top of the engine and the results: S/N maps and deep images (:mod:`.snr`),
heliocentric corrections (:mod:`.heliocentric`), sky-line velocity calibration
(:mod:`.skycal`)."""

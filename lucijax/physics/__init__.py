"""Physics, written once: line shapes and their exact fluxes (:mod:`.lineshapes`), the line
catalogue and line sets (:mod:`.lines`), the instrument (:mod:`.instrument`), Doppler shifts
and flux units (:mod:`.conversions`). Imports nothing else of lucijax but its constants."""

"""Physical and instrumental constants shared by every module."""

#: Speed of light in km/s.
C_KMS = 299792.458

#: Full width at half maximum of ``numpy.sinc`` (``sin(pi x)/(pi x)``) in units of x.
#: ORB/ORCS use the same constant to turn the sinc FWHM into its width.
SINC_FWHM = 1.20671

#: ``2 sqrt(2 ln 2)``: Gaussian FWHM / standard deviation.
GAUSS_FWHM_OVER_SIGMA = 2.3548200450309493

#: Percentiles that summarise posterior draws (lower, median, upper): errors are half the
#: 16-84 % width; diagnostic ratios are written as ``{RATIO}_Q{p}`` maps.
QUANTILES = (16, 50, 84)

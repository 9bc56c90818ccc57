"""The NetCDF-4 side of NetCDF4Backend: the ``root`` adapter with netCDF4.Dataset's surface over
h5netcdf (:mod:`.root`)."""

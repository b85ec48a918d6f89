"""The reference image of each field and band (group ``references``)."""

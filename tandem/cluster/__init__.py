"""Ray plumbing: start or attach Ray, placement groups and actor groups, process groups, weight sync, job submit."""

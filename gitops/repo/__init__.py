"""The repository a team keeps: its files at a commit, git, `init`, `new`, `doctor`, `ls`, the demo."""

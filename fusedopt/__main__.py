"""`python -m fusedopt`: print what fusedopt was built with and what `auto` picks."""
from ._info import format_info, info

if __name__ == "__main__":
    print(format_info(info()))

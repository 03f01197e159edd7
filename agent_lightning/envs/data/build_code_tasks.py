"""Regenerates ``code_tasks.json``, the problems of the ``code`` environment.

Run ``python -m agent_lightning.envs.data.build_code_tasks`` after editing a problem.
Expected values are computed here from the reference solutions (our own code, run
in-process); the environment itself only ever runs a model's code in the sandbox.
Each problem: ``id``, ``split``, ``entry_point``, ``description``, ``reference`` (source),
``tests`` (``{"args": [...], "expected": ...}``, the first ``num_public`` shown in the prompt).
"""

from __future__ import annotations

import json
import pathlib
import textwrap

# (entry point, split, description, reference source, test argument lists)
PROBLEMS = [
    ("sum_of_squares", "train", "Return the sum of i*i for i from 1 to n (0 when n < 1).",
     "def sum_of_squares(n):\n    return sum(i * i for i in range(1, n + 1))\n",
     [[3], [1], [0], [10], [-4], [100]]),
    ("reverse_words", "train", "Return the words of the string s in reverse order, joined by single spaces.",
     "def reverse_words(s):\n    return ' '.join(reversed(s.split()))\n",
     [["hello world"], ["a"], ["  one two   three "], [""], ["x y z w"]]),
    ("is_palindrome", "train", "Return True if s reads the same forwards and backwards, ignoring case and "
     "every character that is not a letter or digit.",
     "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n",
     [["Racecar"], ["hello"], ["A man, a plan, a canal: Panama"], [""], ["ab"], ["No 'x' in Nixon"]]),
    ("count_vowels", "train", "Return how many characters of s are vowels (a, e, i, o, u, either case).",
     "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n",
     [["hello"], ["AEIOU xyz"], [""], ["rhythm"], ["Programming Language"]]),
    ("fizzbuzz", "train", "Return a list of strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' for multiples "
     "of 5, 'FizzBuzz' for both, else the number itself as a string.",
     "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        s = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')\n"
     "        out.append(s or str(i))\n    return out\n",
     [[5], [15], [1], [0]]),
    ("second_largest", "train", "Return the second largest distinct value in the list nums, or None if there "
     "is none.",
     "def second_largest(nums):\n    values = sorted(set(nums))\n    return values[-2] if len(values) > 1 else None\n",
     [[[3, 1, 4, 1, 5]], [[7, 7, 7]], [[]], [[-2, -9]], [[10, 20, 20, 5]]]),
    ("run_length_encode", "train", "Run-length encode s: each run of a repeated character becomes the character "
     "followed by the run length, e.g. 'aaab' -> 'a3b1'.",
     "def run_length_encode(s):\n    out = []\n    i = 0\n    while i < len(s):\n        j = i\n"
     "        while j < len(s) and s[j] == s[i]:\n            j += 1\n        out.append(s[i] + str(j - i))\n"
     "        i = j\n    return ''.join(out)\n",
     [["aaab"], [""], ["abc"], ["zzzzzzzzzzzz"], ["aabbaa"]]),
    ("flatten", "train", "Flatten an arbitrarily nested list of integers into a flat list, keeping the order.",
     "def flatten(nested):\n    out = []\n    for x in nested:\n        if isinstance(x, list):\n"
     "            out.extend(flatten(x))\n        else:\n            out.append(x)\n    return out\n",
     [[[1, [2, [3, 4]], 5]], [[]], [[[[[]]]]], [[1, 2, 3]], [[[1], [2, [3, [4, [5]]]]]]]),
    ("digit_sum", "train", "Return the sum of the decimal digits of the integer n (use its absolute value).",
     "def digit_sum(n):\n    return sum(int(d) for d in str(abs(n)))\n",
     [[123], [0], [-45], [99999], [1000000001]]),
    ("gcd", "train", "Return the greatest common divisor of the non-negative integers a and b (gcd(0, 0) = 0).",
     "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
     [[12, 18], [7, 13], [0, 5], [0, 0], [1071, 462], [100, 10]]),
    ("is_prime", "train", "Return True if the integer n is a prime number.",
     "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
     "        if n % i == 0:\n            return False\n        i += 1\n    return True\n",
     [[2], [1], [17], [21], [7919], [-7], [1000003]]),
    ("merge_sorted", "train", "Merge two sorted lists of integers into one sorted list.",
     "def merge_sorted(a, b):\n    return sorted(a + b)\n",
     [[[1, 3, 5], [2, 4]], [[], [1]], [[], []], [[1, 1], [1]], [[-5, 0], [-6, 10]]]),
    ("char_frequency", "train", "Return a dict mapping each character of s to how many times it occurs.",
     "def char_frequency(s):\n    out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out\n",
     [["hello"], [""], ["aaa"], ["a b a"]]),
    ("rotate_list", "train", "Rotate the list xs to the right by k positions (k may exceed the length; an empty "
     "list stays empty).",
     "def rotate_list(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return xs[-k:] + xs[:-k] if k else list(xs)\n",
     [[[1, 2, 3, 4, 5], 2], [[1, 2, 3], 0], [[], 3], [[1, 2], 5], [[9], 100]]),
    ("longest_common_prefix", "train", "Return the longest common prefix of a list of strings ('' for an empty list).",
     "def longest_common_prefix(words):\n    if not words:\n        return ''\n    prefix = words[0]\n"
     "    for w in words[1:]:\n        while not w.startswith(prefix):\n            prefix = prefix[:-1]\n    return prefix\n",
     [[["flower", "flow", "flight"]], [["dog", "racecar"]], [[]], [["same", "same"]], [["a"]]]),
    ("binary_to_int", "train", "Convert a string of 0s and 1s to the integer it represents in base 2.",
     "def binary_to_int(s):\n    value = 0\n    for c in s:\n        value = value * 2 + (c == '1')\n    return value\n",
     [["101"], ["0"], ["11111111"], ["1000000000000"]]),
    ("capitalize_words", "train", "Capitalise the first letter of every space-separated word of s and lower-case "
     "the rest of it; keep the spacing.",
     "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split(' '))\n",
     [["hello world"], ["hELLO  wORLD"], [""], ["a"]]),
    ("unique_in_order", "train", "Remove consecutive duplicates from the list xs, keeping the first of each run.",
     "def unique_in_order(xs):\n    out = []\n    for x in xs:\n        if not out or out[-1] != x:\n            out.append(x)\n    return out\n",
     [[[1, 1, 2, 2, 2, 3, 1]], [[]], [["a", "a", "b"]], [[5]]]),
    ("pascal_row", "train", "Return row n (0-based) of Pascal's triangle as a list.",
     "def pascal_row(n):\n    row = [1]\n    for _ in range(n):\n        row = [a + b for a, b in zip([0] + row, row + [0])]\n    return row\n",
     [[0], [1], [4], [10]]),
    ("transpose", "train", "Return the transpose of a rectangular matrix given as a list of rows.",
     "def transpose(m):\n    return [list(r) for r in zip(*m)]\n",
     [[[[1, 2, 3], [4, 5, 6]]], [[[1]]], [[[1, 2]]], [[[1], [2], [3]]]]),
    ("collatz_steps", "train", "Return how many steps the Collatz process (n -> n/2 if even, else 3n+1) takes "
     "to reach 1 from the positive integer n.",
     "def collatz_steps(n):\n    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n    return steps\n",
     [[1], [6], [27], [97]]),
    ("caesar_shift", "train", "Shift every letter of s forward by k places in the alphabet, wrapping around and "
     "keeping case; leave other characters unchanged.",
     "def caesar_shift(s, k):\n    out = []\n    for c in s:\n        if c.isalpha() and c.isascii():\n"
     "            base = ord('a') if c.islower() else ord('A')\n            out.append(chr((ord(c) - base + k) % 26 + base))\n"
     "        else:\n            out.append(c)\n    return ''.join(out)\n",
     [["abc", 1], ["xyz", 3], ["Hello, World!", 13], ["", 5], ["abc", -1]]),
    ("dedupe", "train", "Return the items of xs without duplicates, keeping the first occurrence of each.",
     "def dedupe(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n"
     "            seen.add(x)\n            out.append(x)\n    return out\n",
     [[[3, 1, 3, 2, 1]], [[]], [["b", "a", "b"]], [[1, 1, 1]]]),
    ("chunk", "train", "Split xs into consecutive chunks of length size (the last may be shorter).",
     "def chunk(xs, size):\n    return [xs[i:i + size] for i in range(0, len(xs), size)]\n",
     [[[1, 2, 3, 4, 5], 2], [[], 3], [[1, 2], 5], [[1, 2, 3], 1]]),
    ("fibonacci", "train", "Return the n-th Fibonacci number, with fibonacci(0) = 0 and fibonacci(1) = 1.",
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     [[0], [1], [10], [50], [90]]),
    ("count_bits", "train", "Return the number of 1 bits in the binary form of the non-negative integer n.",
     "def count_bits(n):\n    return bin(n).count('1')\n",
     [[0], [7], [8], [255], [2 ** 40 + 1]]),
    # ------------------------------------------------------------------ held out
    ("roman_to_int", "eval", "Convert a Roman numeral (I, V, X, L, C, D, M; subtractive forms like IV, IX, XL) "
     "to an integer.",
     "def roman_to_int(s):\n    v = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n    total = 0\n"
     "    for i, c in enumerate(s):\n        if i + 1 < len(s) and v[c] < v[s[i + 1]]:\n            total -= v[c]\n"
     "        else:\n            total += v[c]\n    return total\n",
     [["III"], ["IV"], ["MCMXCIV"], ["LVIII"], ["MMXXIV"], ["XC"]]),
    ("valid_ipv4", "eval", "Return True if s is a dotted IPv4 address: four decimal numbers 0-255 separated by "
     "dots, without leading zeros (except '0' itself).",
     "def valid_ipv4(s):\n    parts = s.split('.')\n    if len(parts) != 4:\n        return False\n    for p in parts:\n"
     "        if not p.isdigit() or not p.isascii() or (len(p) > 1 and p[0] == '0') or int(p) > 255:\n            return False\n"
     "    return True\n",
     [["192.168.1.1"], ["256.1.1.1"], ["1.2.3"], ["01.2.3.4"], ["0.0.0.0"], ["1.2.3.4.5"], ["a.b.c.d"], ["1..2.3"]]),
    ("compress_ranges", "eval", "Given a sorted list of distinct integers, describe it as ranges: runs of "
     "consecutive numbers become 'a-b', single numbers 'a'; return the list of strings.",
     "def compress_ranges(nums):\n    out = []\n    i = 0\n    while i < len(nums):\n        j = i\n"
     "        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:\n            j += 1\n"
     "        out.append(str(nums[i]) if i == j else f'{nums[i]}-{nums[j]}')\n        i = j + 1\n    return out\n",
     [[[1, 2, 3, 5, 7, 8]], [[]], [[4]], [[-3, -2, -1, 1]], [[10, 12, 14]]]),
    ("spiral_order", "eval", "Return the elements of a rectangular matrix (list of rows) in clockwise spiral "
     "order starting at the top-left corner.",
     "def spiral_order(m):\n    out = []\n    m = [list(r) for r in m]\n    while m:\n        out.extend(m.pop(0))\n"
     "        m = [list(r) for r in zip(*m)][::-1]\n    return out\n",
     [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], [[[1, 2], [3, 4], [5, 6]]], [[]], [[[7]]], [[[1, 2, 3, 4]]]]),
    ("anagram_groups", "eval", "Group the words that are anagrams of each other. Return a list of groups, each "
     "group sorted alphabetically, the groups sorted by their first word.",
     "def anagram_groups(words):\n    groups = {}\n    for w in words:\n        groups.setdefault(''.join(sorted(w)), []).append(w)\n"
     "    return sorted(sorted(g) for g in groups.values())\n",
     [[["eat", "tea", "tan", "ate", "nat", "bat"]], [[]], [["abc"]], [["ab", "ba", "ab"]]]),
    ("max_subarray_sum", "eval", "Return the largest sum of a non-empty contiguous slice of the non-empty list nums.",
     "def max_subarray_sum(nums):\n    best = cur = nums[0]\n    for x in nums[1:]:\n        cur = max(x, cur + x)\n"
     "        best = max(best, cur)\n    return best\n",
     [[[-2, 1, -3, 4, -1, 2, 1, -5, 4]], [[-3, -1, -2]], [[5]], [[1, 2, 3]], [[2, -1, 2, -1, 2]]]),
    ("balanced_brackets", "eval", "Return True if every bracket in s ((), [], {}) is closed in the right order; "
     "ignore other characters.",
     "def balanced_brackets(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n"
     "        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n"
     "            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack\n",
     [["([]{})"], ["(]"], [""], ["((("], ["a(b[c]d)e"], ["}{"]]),
    ("median", "eval", "Return the median of a non-empty list of numbers as a float (mean of the two middle "
     "values for even lengths).",
     "def median(nums):\n    s = sorted(nums)\n    n = len(s)\n    return float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2\n",
     [[[3, 1, 2]], [[4, 1, 2, 3]], [[5]], [[-1, -1, 7, 9]], [[1.5, 2.5]]]),
    ("count_islands", "eval", "Count the islands in a grid of 0s and 1s (list of rows): groups of 1s connected "
     "horizontally or vertically.",
     "def count_islands(grid):\n    seen = set()\n    count = 0\n    for r in range(len(grid)):\n"
     "        for c in range(len(grid[0]) if grid else 0):\n            if grid[r][c] == 1 and (r, c) not in seen:\n"
     "                count += 1\n                stack = [(r, c)]\n                while stack:\n"
     "                    y, x = stack.pop()\n                    if (y, x) in seen or not (0 <= y < len(grid) and 0 <= x < len(grid[0])):\n"
     "                        continue\n                    if grid[y][x] != 1:\n                        continue\n"
     "                    seen.add((y, x))\n                    stack += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]\n"
     "    return count\n",
     [[[[1, 1, 0], [0, 1, 0], [1, 0, 1]]], [[]], [[[0, 0], [0, 0]]], [[[1, 0, 1, 0, 1]]], [[[1], [1], [0], [1]]]]),
    ("two_sum_indices", "eval", "Return [i, j] with i < j such that nums[i] + nums[j] == target, choosing the "
     "smallest j and then the smallest i; return [] if there is no such pair.",
     "def two_sum_indices(nums, target):\n    for j in range(len(nums)):\n        for i in range(j):\n"
     "            if nums[i] + nums[j] == target:\n                return [i, j]\n    return []\n",
     [[[2, 7, 11, 15], 9], [[3, 2, 4], 6], [[1, 2], 7], [[5, 5, 5], 10], [[], 0]]),
]


def build() -> list[dict]:
    problems = []
    for entry, split, description, reference, arg_lists in PROBLEMS:
        namespace: dict = {}
        exec(compile(reference, f"<reference {entry}>", "exec"), namespace)  # our own trusted code
        fn = namespace[entry]
        tests = [{"args": args, "expected": fn(*json.loads(json.dumps(args)))} for args in arg_lists]
        problems.append({"id": f"code-{entry}", "split": split, "entry_point": entry,
                         "description": textwrap.dedent(description), "reference": reference,
                         "tests": tests, "num_public": 2})
    return problems


def main() -> None:
    out = pathlib.Path(__file__).with_name("code_tasks.json")
    out.write_text(json.dumps({"problems": build()}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

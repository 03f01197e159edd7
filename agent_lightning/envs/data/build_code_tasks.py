"""Regenerates ``code_tasks.json``, the problems of the ``code`` environment.

Run ``python -m agent_lightning.envs.data.build_code_tasks`` after editing a problem.
Expected values are computed here from the reference solutions (our own code, run
in-process); the environment itself only ever runs a model's code in the sandbox.
Each problem: ``id``, ``split``, ``level``, ``entry_point``, ``description``, ``reference``
(source), ``tests`` (``{"args": [...], "expected": ...}``, the first ``num_public`` shown in the
prompt). Levels: ``standard`` (``PROBLEMS``, the environment's default) and ``basic``
(``BASIC_PROBLEMS``: one-to-three-line functions a very small model can learn; each eval
problem is a sibling of a train one, e.g. ``cube`` of ``square``, never a copy).
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


# Same layout as PROBLEMS. Level ``basic``; descriptions are one sentence naming the arguments.
BASIC_PROBLEMS = [
    # numbers
    ("square", "train", "Return the integer n multiplied by itself.",
     "def square(n):\n    return n * n\n", [[3], [-4], [0], [1], [25]]),
    ("is_even", "train", "Return True if the integer n is even, else False.",
     "def is_even(n):\n    return n % 2 == 0\n", [[4], [7], [0], [-3], [-10]]),
    ("celsius_to_fahrenheit", "train", "Return the temperature c in degrees Celsius converted to degrees "
     "Fahrenheit (c * 9 / 5 + 32).",
     "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32\n", [[100], [0], [-40], [37], [21.5]]),
    ("max_of_two", "train", "Return the larger of the two numbers a and b.",
     "def max_of_two(a, b):\n    return a if a > b else b\n", [[3, 7], [10, -2], [5, 5], [-1, -8], [0, 0.5]]),
    ("sign", "train", "Return 1 if the number n is positive, -1 if it is negative and 0 if it is zero.",
     "def sign(n):\n    if n > 0:\n        return 1\n    return -1 if n < 0 else 0\n",
     [[42], [-7], [0], [0.5], [-1000]]),
    ("rectangle_area", "train", "Return the area of a rectangle whose sides are width and height.",
     "def rectangle_area(width, height):\n    return width * height\n", [[3, 4], [10, 2], [0, 5], [1, 1], [2.5, 4]]),
    ("average", "train", "Return the mean of the non-empty list of numbers nums as a float.",
     "def average(nums):\n    return sum(nums) / len(nums)\n",
     [[[1, 2, 3]], [[10, 20]], [[5]], [[-1, 1]], [[0.5, 1.5, 2.5, 3.5]]]),
    ("factorial", "train", "Return the product 1 * 2 * ... * n for the non-negative integer n (1 when n is 0).",
     "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result\n",
     [[5], [3], [0], [1], [10]]),
    ("last_digit", "train", "Return the last decimal digit of the integer n, ignoring its sign.",
     "def last_digit(n):\n    return abs(n) % 10\n", [[123], [7], [0], [-58], [1000]]),
    ("sum_to_n", "train", "Return the sum of the integers from 1 to n (0 when n is less than 1).",
     "def sum_to_n(n):\n    return sum(range(1, n + 1))\n", [[4], [10], [0], [1], [-5], [100]]),
    ("is_positive", "train", "Return True if the number n is greater than zero, else False.",
     "def is_positive(n):\n    return n > 0\n", [[5], [-3], [0], [0.001], [-0.5]]),
    # lists
    ("largest", "train", "Return the largest number in the non-empty list nums.",
     "def largest(nums):\n    return max(nums)\n",
     [[[3, 9, 2]], [[-5, -1, -7]], [[4]], [[2, 2, 2]], [[0, -1, 100, 99]]]),
    ("sum_list", "train", "Return the sum of the numbers in the list nums (0 for an empty list).",
     "def sum_list(nums):\n    return sum(nums)\n", [[[1, 2, 3]], [[10, -4]], [[]], [[7]], [[-1, -2, -3]]]),
    ("last_element", "train", "Return the last element of the list xs, or None if xs is empty.",
     "def last_element(xs):\n    return xs[-1] if xs else None\n",
     [[[1, 2, 3]], [["a", "b"]], [[]], [[42]], [[None, 0]]]),
    ("without_negatives", "train", "Return the list nums without its negative numbers, keeping the order.",
     "def without_negatives(nums):\n    return [x for x in nums if x >= 0]\n",
     [[[1, -2, 3]], [[-1, -5]], [[]], [[0, -0.5, 7]], [[4, 4, -4]]]),
    ("count_evens", "train", "Return how many integers in the list nums are even.",
     "def count_evens(nums):\n    return sum(1 for x in nums if x % 2 == 0)\n",
     [[[1, 2, 3, 4]], [[1, 3, 5]], [[]], [[0]], [[-2, -3, 8, 10]]]),
    ("first_n_evens", "train", "Return a list of the first n even numbers starting from 0 (empty when n is 0).",
     "def first_n_evens(n):\n    return [2 * i for i in range(n)]\n", [[3], [5], [0], [1], [8]]),
    ("reverse_list", "train", "Return a new list with the items of the list xs in reverse order.",
     "def reverse_list(xs):\n    return xs[::-1]\n", [[[1, 2, 3]], [["a", "b"]], [[]], [[7]], [[1, 1, 2]]]),
    ("double_all", "train", "Return a list with every number of the list nums multiplied by 2.",
     "def double_all(nums):\n    return [2 * x for x in nums]\n",
     [[[1, 2, 3]], [[-4, 0]], [[]], [[0.5]], [[100, -100]]]),
    ("contains", "train", "Return True if the value x occurs in the list xs, else False.",
     "def contains(xs, x):\n    return x in xs\n",
     [[[1, 2, 3], 2], [["a", "b"], "c"], [[], 1], [[0], 0], [[1, 2], "1"]]),
    ("sum_of_evens", "train", "Return the sum of the even integers in the list nums.",
     "def sum_of_evens(nums):\n    return sum(x for x in nums if x % 2 == 0)\n",
     [[[1, 2, 3, 4]], [[5, 7]], [[]], [[-2, -4, 1]], [[10]]]),
    ("first_n", "train", "Return the first n items of the list xs (all of them when xs has fewer than n).",
     "def first_n(xs, n):\n    return xs[:n]\n",
     [[[1, 2, 3, 4], 2], [["a", "b", "c"], 1], [[], 3], [[1, 2], 0], [[5, 6], 10]]),
    ("is_sorted", "train", "Return True if the numbers in the list nums are in non-decreasing order, else False.",
     "def is_sorted(nums):\n    return all(a <= b for a, b in zip(nums, nums[1:]))\n",
     [[[1, 2, 3]], [[3, 1, 2]], [[]], [[5]], [[1, 1, 2]], [[2, 1]]]),
    ("get_value", "train", "Return the value stored under key in the dict d, or 0 when key is not in d.",
     "def get_value(d, key):\n    return d.get(key, 0)\n",
     [[{"a": 1, "b": 2}, "b"], [{"x": 5}, "y"], [{}, "a"], [{"k": -3}, "k"], [{"a": 0, "b": 9}, "a"]]),
    # strings
    ("reverse_string", "train", "Return the string s reversed.",
     "def reverse_string(s):\n    return s[::-1]\n", [["hello"], ["abc"], [""], ["a"], ["racecar"], ["Hi there!"]]),
    ("count_words", "train", "Return the number of words in the string s, where words are separated by whitespace.",
     "def count_words(s):\n    return len(s.split())\n",
     [["hello world"], ["one two three"], [""], ["   "], ["  many   spaces here "], ["single"]]),
    ("count_char", "train", "Return how many times the character c occurs in the string s.",
     "def count_char(s, c):\n    return s.count(c)\n",
     [["banana", "a"], ["hello", "l"], ["", "x"], ["abc", "z"], ["AaAa", "a"]]),
    ("to_lower", "train", "Return the string s with every letter in lower case.",
     "def to_lower(s):\n    return s.lower()\n", [["Hello"], ["ABC def"], [""], ["123!"], ["MiXeD CaSe"]]),
    ("starts_with", "train", "Return True if the string s begins with the string prefix, else False.",
     "def starts_with(s, prefix):\n    return s.startswith(prefix)\n",
     [["hello", "he"], ["hello", "lo"], ["", ""], ["abc", ""], ["ab", "abc"]]),
    ("repeat_string", "train", "Return the string s repeated n times (an empty string when n is 0).",
     "def repeat_string(s, n):\n    return s * n\n", [["ab", 3], ["x", 5], ["abc", 0], ["", 4], ["hi", 1]]),
    ("remove_spaces", "train", "Return the string s with every space character removed.",
     "def remove_spaces(s):\n    return s.replace(' ', '')\n",
     [["a b c"], ["hello world"], [""], ["   "], ["nospace"]]),
    ("first_char", "train", "Return the first character of the string s, or an empty string if s is empty.",
     "def first_char(s):\n    return s[:1]\n", [["hello"], ["xyz"], [""], ["a"], [" space"]]),
    ("join_words", "train", "Return the strings in the list words joined together with a single space between "
     "them.",
     "def join_words(words):\n    return ' '.join(words)\n",
     [[["hello", "world"]], [["a", "b", "c"]], [[]], [["one"]], [["", "x"]]]),
    ("initials", "train", "Return the upper-case first letters of the space-separated words of the string name, "
     "joined together.",
     "def initials(name):\n    return ''.join(w[0].upper() for w in name.split())\n",
     [["Ada Lovelace"], ["grace brewster hopper"], [""], ["x"], ["  alan   turing "]]),
    ("longest_word", "train", "Return the longest word of the string s, the first one if several are equally "
     "long ('' if s has no words).",
     "def longest_word(s):\n    best = ''\n    for w in s.split():\n        if len(w) > len(best):\n"
     "            best = w\n    return best\n",
     [["the quick brown fox"], ["a bb ccc"], [""], ["tie tie"], ["one three two"]]),
    ("has_digit", "train", "Return True if the string s contains at least one digit 0-9, else False.",
     "def has_digit(s):\n    return any(c in '0123456789' for c in s)\n",
     [["abc1"], ["hello"], [""], ["2024"], ["no digits!"]]),
    # ------------------------------------------------------------------ held out: siblings of train problems
    ("cube", "eval", "Return the integer n raised to the power 3.",
     "def cube(n):\n    return n ** 3\n", [[2], [-3], [0], [1], [10]]),
    ("is_multiple", "eval", "Return True if the integer n is a multiple of the non-zero integer k, else False.",
     "def is_multiple(n, k):\n    return n % k == 0\n", [[10, 5], [7, 2], [0, 3], [-9, 3], [14, -7], [5, 10]]),
    ("fahrenheit_to_celsius", "eval", "Return the temperature f in degrees Fahrenheit converted to degrees "
     "Celsius ((f - 32) * 5 / 9).",
     "def fahrenheit_to_celsius(f):\n    return (f - 32) * 5 / 9\n", [[212], [32], [-40], [98.6], [0]]),
    ("min_of_three", "eval", "Return the smallest of the three numbers a, b and c.",
     "def min_of_three(a, b, c):\n    return min(a, b, c)\n",
     [[3, 1, 2], [5, 9, 7], [4, 4, 4], [-1, -5, 0], [2.5, 3, 2]]),
    ("smallest", "eval", "Return the smallest number in the non-empty list nums.",
     "def smallest(nums):\n    return min(nums)\n",
     [[[3, 9, 2]], [[-5, -1, -7]], [[4]], [[2, 2, 2]], [[0, 100, -0.5]]]),
    ("product_list", "eval", "Return the product of the numbers in the list nums (1 for an empty list).",
     "def product_list(nums):\n    result = 1\n    for x in nums:\n        result *= x\n    return result\n",
     [[[2, 3, 4]], [[5, -1]], [[]], [[7]], [[1, 2, 0, 9]]]),
    ("first_element", "eval", "Return the first element of the list xs, or None if xs is empty.",
     "def first_element(xs):\n    return xs[0] if xs else None\n",
     [[[1, 2, 3]], [["a", "b"]], [[]], [[42]], [[None, 1]]]),
    ("square_all", "eval", "Return a list with every number of the list nums squared.",
     "def square_all(nums):\n    return [x * x for x in nums]\n",
     [[[1, 2, 3]], [[-4, 0]], [[]], [[0.5]], [[10, -10]]]),
    ("ends_with", "eval", "Return True if the string s finishes with the string suffix, else False.",
     "def ends_with(s, suffix):\n    return s.endswith(suffix)\n",
     [["hello", "lo"], ["hello", "he"], ["", ""], ["abc", ""], ["bc", "abc"]]),
    ("count_digits", "eval", "Return how many characters of the string s are digits 0-9.",
     "def count_digits(s):\n    return sum(c in '0123456789' for c in s)\n",
     [["a1b2c3"], ["hello"], [""], ["2024"], ["room 101, floor 3"]]),
    ("last_char", "eval", "Return the last character of the string s, or an empty string if s is empty.",
     "def last_char(s):\n    return s[-1:]\n", [["hello"], ["xyz"], [""], ["a"], ["end "]]),
    ("join_with_commas", "eval", "Return the strings in the list words joined together with ', ' between them.",
     "def join_with_commas(words):\n    return ', '.join(words)\n",
     [[["a", "b", "c"]], [["red", "green"]], [[]], [["one"]], [["x", ""]]]),
]


LEVELS = {"standard": PROBLEMS, "basic": BASIC_PROBLEMS}


def _problem(level: str, entry: str, split: str, description: str, reference: str, arg_lists: list) -> dict:
    namespace: dict = {}
    exec(compile(reference, f"<reference {entry}>", "exec"), namespace)  # our own trusted code
    fn = namespace[entry]
    tests = [{"args": args, "expected": fn(*json.loads(json.dumps(args)))} for args in arg_lists]
    return {"id": f"code-{entry}", "split": split, "level": level, "entry_point": entry,
            "description": textwrap.dedent(description), "reference": reference, "tests": tests, "num_public": 2}


def build() -> list[dict]:
    return [_problem(level, *spec) for level, specs in LEVELS.items() for spec in specs]


def main() -> None:
    out = pathlib.Path(__file__).with_name("code_tasks.json")
    out.write_text(json.dumps({"problems": build()}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
